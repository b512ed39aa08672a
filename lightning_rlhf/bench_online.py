"""``python -m lightning_rlhf.bench_online``: where one online iteration's time goes.

For PPO, MA-PPO and P3O on the same model and prompt batches, fits a few iterations through the
real CLI and splits each into generation, scoring, log-probs (old + reference), advantages and
updates; prints a Markdown table with tokens/s (prompt + response tokens per iteration second).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import lightning as L

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALGORITHMS = {
    "ppo": "ppo/arithmetic.yaml",
    "mappo": "mappo/arithmetic.yaml",
    "p3o": "p3o/arithmetic.yaml",
}
PHASES = ("generate", "score", "logprobs", "advantages", "update")
TINY = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 384,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
        "max_position_embeddings": 64, "tie_word_embeddings": True}  # fmt: skip


class _Recorder(L.Callback):
    """Keeps ``pl_module.last_timings`` of every training batch."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows.append(dict(pl_module.last_timings))


def bench_one(config: str, policy: str | None, iterations: int, batch_size: int) -> dict:
    """Fit ``iterations`` rollouts of one algorithm; mean seconds per phase (first one dropped)."""
    from lightning_rlhf.cli import RLHFCLI

    source = (
        {"name_or_path": policy, "config": None}
        if policy
        else {"name_or_path": None, "config": TINY}
    )
    with tempfile.TemporaryDirectory() as root:
        args = [
            "--config", str(CONFIGS / config), "--trainer.default_root_dir", root,
            "--trainer.max_steps", "1000000", "--trainer.limit_train_batches", str(iterations + 1),
            "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.callbacks", "[]", "--trainer.logger", "false",
            "--model.init_args.policy", json.dumps(source),
            "--data.batch_size", str(batch_size),
            "--data.num_train", str(batch_size * (iterations + 1)), "--data.num_val", "0",
        ]  # fmt: skip
        cli = RLHFCLI(args=args, run=False)
        recorder = _Recorder()
        cli.trainer.callbacks.append(recorder)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    rows = recorder.rows[1:] or recorder.rows
    mean = {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in (*PHASES, "tokens")}
    mean["total"] = sum(mean[p] for p in PHASES)
    mean["tokens_per_s"] = mean["tokens"] / max(mean["total"], 1e-9)
    return mean


def table(results: dict[str, dict]) -> str:
    """Markdown: seconds and share of each phase per iteration, and tokens/s."""
    head = ["algorithm", *[f"{p} s (%)" for p in PHASES], "total s", "tokens/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [f"{r[p]:.3f} ({100 * r[p] / max(r['total'], 1e-9):.0f}%)" for p in PHASES]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {r['total']:.3f} | {r['tokens_per_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_rlhf.bench_online", description=__doc__
    )
    parser.add_argument("--policy", default=None, help="policy path (default: a fresh 0.6M Llama)")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per algorithm")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per iteration")
    parser.add_argument("--only", default=None, help="comma-separated subset of ppo,mappo,p3o")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(ALGORITHMS)
    results = {
        n: bench_one(ALGORITHMS[n], args.policy, args.iterations, args.batch_size) for n in names
    }
    print("\n" + table(results))


if __name__ == "__main__":
    main()
