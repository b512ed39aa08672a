"""Objectives as pure tensor functions: tensors in, ``(loss, detached stats)`` out."""

from lightning_rlhf.losses.alol import alol_loss
from lightning_rlhf.losses.preference import dpo_loss, pro_loss
from lightning_rlhf.losses.supervised import bradley_terry_loss, sft_loss

__all__ = ["alol_loss", "bradley_terry_loss", "dpo_loss", "pro_loss", "sft_loss"]
