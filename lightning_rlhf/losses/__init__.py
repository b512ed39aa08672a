"""Objectives as pure tensor functions: tensors in, ``(loss, detached stats)`` out."""

from lightning_rlhf.losses.alol import alol_loss
from lightning_rlhf.losses.critic_free import (
    grpo_advantages,
    grpo_loss,
    reinforce_loss,
    remax_advantages,
    rloo_advantages,
)
from lightning_rlhf.losses.masked import masked_mean, masked_sum
from lightning_rlhf.losses.p3o import p3o_loss
from lightning_rlhf.losses.ppo import (
    explained_variance,
    gae_advantages,
    masked_whiten,
    policy_loss,
    value_loss,
)
from lightning_rlhf.losses.preference import dpo_loss, pro_loss
from lightning_rlhf.losses.supervised import bradley_terry_loss, sft_loss

__all__ = [
    "alol_loss",
    "bradley_terry_loss",
    "dpo_loss",
    "explained_variance",
    "gae_advantages",
    "grpo_advantages",
    "grpo_loss",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
    "p3o_loss",
    "policy_loss",
    "pro_loss",
    "reinforce_loss",
    "remax_advantages",
    "rloo_advantages",
    "sft_loss",
    "value_loss",
]
