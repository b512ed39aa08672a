"""Helper of the 2-process tests: a per-rank loss recorder (importable by class path from a CLI
run: ``tests`` is a package)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class LossRecorder(L.Callback):
    """Writes ``losses_rank<r>.json``: this rank's logged ``train/loss`` per global step."""

    def __init__(self, key: str = "train/loss") -> None:
        self.key = key
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_) -> None:
        value = trainer.callback_metrics.get(self.key)
        if value is not None:
            self.losses[trainer.global_step] = float(value)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = Path(trainer.default_root_dir) / f"losses_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.losses))
