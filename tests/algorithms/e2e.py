"""End-to-end helpers for algorithm tests: a tiny model, a CLI runner, a parameter snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from lightning_rlhf.cli import RLHFCLI

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}


class ParamSnapshot(L.Callback):
    """Records trainable parameters when training starts and the global step it starts from."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step
        self.before = {
            n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad
        }

    def unchanged(self, pl_module: L.LightningModule) -> list[str]:
        after = dict(pl_module.named_parameters())
        return [n for n, p in self.before.items() if torch.equal(p, after[n].detach())]


def run_fit(
    config: str, root: Path, *extra: str, steps: int = 4, ckpt_path: Path | None = None
) -> tuple[RLHFCLI, ParamSnapshot]:
    """Fit ``configs/<config>`` for ``steps`` steps into ``root`` through the real CLI parser
    (``fit``'s own parser; ``ckpt_path`` resumes)."""
    args = [
        "--config",
        str(CONFIGS / config),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        str(steps),
        "--trainer.limit_val_batches",
        "1",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--data.num_train",
        "64",
        "--data.num_val",
        "16",
        "--data.batch_size",
        "8",
        *extra,
    ]
    cli = RLHFCLI(args=args, run=False)
    snapshot = ParamSnapshot()
    cli.trainer.callbacks.append(snapshot)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli, snapshot


def tiny_policy() -> list[str]:
    """CLI arguments that replace the policy by a tiny from-scratch Llama."""
    return ["--model.init_args.policy", json.dumps({"name_or_path": None, "config": TINY})]
