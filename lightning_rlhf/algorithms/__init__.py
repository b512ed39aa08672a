"""One LightningModule per algorithm; ``ALGORITHMS`` maps the name used in configs to the class."""

from lightning_rlhf.algorithms.alol import ALoL
from lightning_rlhf.algorithms.base import RLHFModule
from lightning_rlhf.algorithms.critic_free import GRPO, RLOO, ReMax
from lightning_rlhf.algorithms.dpo import DPO
from lightning_rlhf.algorithms.online import OnlineRLModule
from lightning_rlhf.algorithms.p3o import P3O
from lightning_rlhf.algorithms.ppo import MAPPO, PPO
from lightning_rlhf.algorithms.pro import PRO
from lightning_rlhf.algorithms.reward_model import RewardModel
from lightning_rlhf.algorithms.sft import SFT

ALGORITHMS: dict[str, type[RLHFModule]] = {
    "sft": SFT,
    "reward_model": RewardModel,
    "alol": ALoL,
    "dpo": DPO,
    "pro": PRO,
    "ppo": PPO,
    "mappo": MAPPO,
    "p3o": P3O,
    "rloo": RLOO,
    "remax": ReMax,
    "grpo": GRPO,
}

__all__ = [
    "ALGORITHMS",
    "DPO",
    "GRPO",
    "MAPPO",
    "P3O",
    "PPO",
    "PRO",
    "RLOO",
    "ALoL",
    "OnlineRLModule",
    "RLHFModule",
    "ReMax",
    "RewardModel",
    "SFT",
]
