"""Helper of the 2-process tests: a per-rank loss recorder (importable by class path from a CLI
run: ``tests`` is a package)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from lightning_rlhf.bench_rollout import free_port  # noqa: F401 - the tests' port finder


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


def recorded_digit_share(prompts: list[str], responses: list[str]) -> list[float]:
    """``online_helpers.digit_share`` that also appends each call's responses, one JSON list a
    line, to ``$LRLHF_RECORD_DIR/responses_rank<r>.jsonl`` (r: this process's rank)."""
    import os

    import torch.distributed as dist

    from tests.algorithms.online_helpers import digit_share

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    path = Path(os.environ["LRLHF_RECORD_DIR"]) / f"responses_rank{rank}.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(responses) + "\n")
    return digit_share(prompts, responses)
