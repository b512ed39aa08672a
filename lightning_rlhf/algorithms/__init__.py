"""One LightningModule per algorithm; ``ALGORITHMS`` maps the name used in configs to the class."""

from lightning_rlhf.algorithms.alol import ALoL
from lightning_rlhf.algorithms.base import RLHFModule
from lightning_rlhf.algorithms.dpo import DPO
from lightning_rlhf.algorithms.pro import PRO
from lightning_rlhf.algorithms.reward_model import RewardModel
from lightning_rlhf.algorithms.sft import SFT

ALGORITHMS: dict[str, type[RLHFModule]] = {
    "sft": SFT,
    "reward_model": RewardModel,
    "alol": ALoL,
    "dpo": DPO,
    "pro": PRO,
}

__all__ = ["ALGORITHMS", "ALoL", "DPO", "PRO", "RLHFModule", "RewardModel", "SFT"]
