"""Export the trained policy (or reward model) with ``save_pretrained`` when fitting ends."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from lightning_rlhf.models import export_pretrained


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
        if trainer.is_global_zero:
            path = export_pretrained(
                pl_module.policy,
                pl_module.tokenizer,
                self.target(trainer),
                merge_lora=self.merge_lora,
            )
            rank_zero_info(f"exported {type(pl_module).__name__} policy to {path}")
        trainer.strategy.barrier("hf_export")
