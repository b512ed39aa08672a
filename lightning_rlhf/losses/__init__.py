"""Objectives as pure tensor functions: tensors in, ``(loss, detached stats)`` out."""

from lightning_rlhf.losses.supervised import bradley_terry_loss, sft_loss

__all__ = ["bradley_terry_loss", "sft_loss"]
