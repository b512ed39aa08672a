"""``python -m lightning_rlhf demo``: the embedded task end to end, then a comparison table.

Trains SFT on the arithmetic task's noisy demonstrations with a tiny model from scratch, then the
reward model, then every registered algorithm that declares a demo stage (``DemoStage`` on its
class), each through the same ``fit`` machinery and the YAML files in ``configs/``. Writes
``results.md``, ``results.csv`` and ``reward_vs_kl.png`` into the run directory.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_rlhf.callbacks import evaluate_policy
from lightning_rlhf.data.tasks import get_task
from lightning_rlhf.models import frozen_copy

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
COLUMNS = [
    "algorithm",
    "accuracy",
    "carry_accuracy",
    "non_carry_accuracy",
    "reward",
    "kl",
    "distinct_2",
    "wall_s",
    "tokens_per_s",
]


@dataclass
class DemoStage:
    """How the demo trains one algorithm.

    Attributes:
        name: row name and run sub-directory.
        config: YAML path relative to ``configs/``.
        overrides: extra CLI arguments; ``{run}`` expands to the demo's run directory.
        quick: arguments added in ``--quick`` mode (fewer steps, less data).
        policy_row: whether the stage trains a policy to evaluate (False for the reward model).
        order: stages run in increasing order (SFT 0, reward model 10, the rest after).
    """

    name: str
    config: str
    overrides: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    policy_row: bool = True
    order: int = 100
    extra: dict = field(default_factory=dict)


def registered_stages() -> list[DemoStage]:
    """Every algorithm's demo stages in order (an algorithm adds its own via ``demo_stages``)."""
    from lightning_rlhf.algorithms import ALGORITHMS

    stages = [stage for cls in ALGORITHMS.values() for stage in getattr(cls, "demo_stages", ())]
    return sorted(stages, key=lambda s: (s.order, s.name))


def _fit(stage: DemoStage, run: Path, quick: bool) -> tuple[object, float]:
    from lightning_rlhf.cli import RLHFCLI

    args = [
        "--config",
        str(CONFIGS / stage.config),
        "--trainer.default_root_dir",
        str(run / stage.name),
    ]
    args += [a.format(run=run) for a in stage.overrides]
    if quick:
        args += [a.format(run=run) for a in stage.quick]
    cli = RLHFCLI(args=args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli, time.perf_counter() - start


def _row(stage: DemoStage, cli, wall: float, reference, eval_prompts: int) -> dict:
    module = cli.model
    row = {
        "algorithm": stage.name,
        "wall_s": wall,
        "tokens_per_s": module.tokens_seen / max(wall, 1e-9),
    }
    if stage.policy_row:
        result = evaluate_policy(
            module.policy, module.tokenizer, reference=reference, num_prompts=eval_prompts
        )
        row.update({k: result[k] for k in COLUMNS if k in result})
        if reference is None:  # the SFT policy is the reference itself
            row["kl"] = 0.0
    else:
        row["pairwise_accuracy"] = float(
            cli.trainer.callback_metrics.get("val/accuracy", float("nan"))
        )
    (Path(cli.trainer.default_root_dir) / "row.json").write_text(
        json.dumps(row, indent=2, default=float)
    )
    return row


def _teacher_row(eval_prompts: int) -> dict:
    task = get_task("arithmetic")
    result = task.evaluate(task.teacher, n=eval_prompts)
    return {
        "algorithm": "teacher (data)",
        **{k: result[k] for k in ("accuracy", "carry_accuracy", "non_carry_accuracy", "reward")},
    }


def write_results(rows: list[dict], run: Path) -> None:
    """results.md / results.csv, and reward_vs_kl.png when matplotlib is installed."""
    columns = COLUMNS + [c for c in ("pairwise_accuracy", "error") if any(c in r for r in rows)]
    with (run / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    table = "\n".join(lines)
    (run / "results.md").write_text(table + "\n")
    print("\n" + table + "\n")
    _plot(rows, run / "reward_vs_kl.png")


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        rank_zero_info(
            "matplotlib is not installed: no reward_vs_kl.png (pip install 'lightning-rlhf[demo]')"
        )
        return
    points = [r for r in rows if r.get("kl") is not None and r.get("reward") is not None]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    markers = "osD^v<>phX*"
    for i, r in enumerate(points):
        ax.scatter(r["kl"], r["reward"], marker=markers[i % len(markers)], label=r["algorithm"])
    ax.set_xlabel("KL(policy || SFT) per response (nats)")
    ax.set_ylabel("held-out reward (greedy)")
    ax.set_title("arithmetic with noisy demonstrations")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(
    run: Path,
    quick: bool = False,
    only: list[str] | None = None,
    eval_prompts: int = 500,
    reuse: bool = False,
) -> list[dict]:
    """Train and evaluate every stage; return the table's rows (also written to ``run``).

    With ``reuse``, a stage whose ``row.json`` and ``export/`` already exist in ``run`` is not
    trained again: its row is read back (and the SFT export reloaded as the KL reference).
    """
    run.mkdir(parents=True, exist_ok=True)
    rows, reference = [_teacher_row(eval_prompts)], None
    for stage in registered_stages():
        if only and stage.name not in only and stage.name not in ("sft", "reward_model"):
            continue
        done = run / stage.name / "row.json"
        if reuse and done.exists() and (run / stage.name / "export").exists():
            rank_zero_info(f"=== demo stage: {stage.name}: reusing {done} ===")
            rows.append(json.loads(done.read_text()))
            if stage.name == "sft":
                reference = _load_reference(run / "sft" / "export")
        else:
            rank_zero_info(f"\n=== demo stage: {stage.name} ({stage.config}) ===")
            try:
                cli, wall = _fit(stage, run, quick)
            except Exception as err:  # one broken stage must not cost the others their rows
                if stage.name in ("sft", "reward_model"):
                    raise  # every later stage starts from these
                logging.getLogger(__name__).exception("demo stage %s failed", stage.name)
                rows.append({"algorithm": stage.name, "error": _first_line(err)})
                write_results(rows, run)
                continue
            rows.append(_row(stage, cli, wall, reference, eval_prompts))
            if stage.name == "sft":
                reference = frozen_copy(cli.model.policy)
        write_results(rows, run)
    return rows


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _load_reference(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return frozen_copy(AutoModelForCausalLM.from_pretrained(path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_rlhf demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    parser.add_argument(
        "--quick", action="store_true", help="a ~2 minute version (fewer steps and data)"
    )
    parser.add_argument(
        "--only", default=None, help="comma-separated stages to run besides sft and reward_model"
    )
    parser.add_argument(
        "--eval-prompts", type=int, default=500, help="held-out prompts per evaluation"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="keep stages already trained in --out (row.json)"
    )
    args = parser.parse_args(argv)
    torch.set_float32_matmul_precision("high")
    only = args.only.split(",") if args.only else None
    rows = run_demo(Path(args.out), args.quick, only, args.eval_prompts, reuse=args.reuse)
    failed = [r["algorithm"] for r in rows if "error" in r]
    if failed:
        raise SystemExit(f"demo: stages failed: {', '.join(failed)} (see results.md and the log)")
