"""Export the trained policy (or reward model) with ``save_pretrained`` when fitting ends."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_rlhf.models import export_pretrained
from lightning_rlhf.strategies import fsdp_units, full_state_dict


class HFExport(L.Callback):
    """Save ``pl_module.policy`` and the tokenizer as a Hugging Face directory at the end of fit.

    Args:
        dirpath: target directory; default ``<trainer.default_root_dir>/export``.
        merge_lora: merge a LoRA adapter into the base weights before saving.
    """

    def __init__(self, dirpath: str | None = None, merge_lora: bool = True) -> None:
        self.dirpath = dirpath
        self.merge_lora = merge_lora

    def target(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "export"

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        policy = pl_module.policy
        lora = self.merge_lora and hasattr(policy, "merge_and_unload")
        if lora and fsdp_units(policy):  # FSDP2 modules cannot be deep-copied: gather, then merge
            state = full_state_dict(policy)  # a collective: every rank takes part
            if trainer.is_global_zero:
                policy, state = _merged_copy(pl_module, state), None
        else:
            if lora:
                policy = copy.deepcopy(policy).merge_and_unload()  # merge before gathering shards
            state = full_state_dict(policy)  # a collective under FSDP2: every rank takes part
        if trainer.is_global_zero:
            target = self.target(trainer)
            path = export_pretrained(policy, pl_module.tokenizer, target, state_dict=state)
            rank_zero_info(f"exported {type(pl_module).__name__} policy to {path}")
        trainer.strategy.barrier("hf_export")


def _merged_copy(pl_module: L.LightningModule, state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain (unsharded) LoRA policy built like ``pl_module``'s, holding the gathered ``state``
    (rank 0, CPU), with its adapter merged into the base weights."""
    plain = pl_module.build_policy()
    plain.load_state_dict(state)
    return plain.merge_and_unload()
