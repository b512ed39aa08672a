"""lightning_rlhf: RLHF algorithms (A-LoL, MA-PPO, P3O, PPO, DPO, ...) as Lightning modules."""

__version__ = "0.1.0"
