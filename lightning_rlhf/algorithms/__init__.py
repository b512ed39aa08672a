"""One LightningModule per algorithm; ``ALGORITHMS`` maps the name used in configs to the class."""

from lightning_rlhf.algorithms.base import RLHFModule
from lightning_rlhf.algorithms.reward_model import RewardModel
from lightning_rlhf.algorithms.sft import SFT

ALGORITHMS: dict[str, type[RLHFModule]] = {
    "sft": SFT,
    "reward_model": RewardModel,
}

__all__ = ["ALGORITHMS", "RLHFModule", "RewardModel", "SFT"]
