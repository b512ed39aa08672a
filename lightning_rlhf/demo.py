"""``python -m lightning_rlhf demo``: the embedded task end to end, then a comparison table.

Trains SFT on the arithmetic task's noisy demonstrations with a tiny model from scratch, then the
reward model, then every algorithm in :data:`STAGES` (the demo's one table: a config under
``configs/`` plus overrides), each through the same ``fit`` machinery. The algorithms know nothing
of the demo. Writes
``results.md``, ``results.csv`` and ``reward_vs_kl.png`` into the run directory.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DemoStage:
    """How the demo trains one algorithm.

    Attributes:
        name: row name and run sub-directory.
        config: YAML path relative to ``configs/``.
        overrides: extra CLI arguments; ``{run}`` expands to the demo's run directory.
        quick: arguments added in ``--quick`` mode (fewer steps, less data).
        policy_row: whether the stage trains a policy to evaluate (False for the reward model).
    """

    name: str
    config: str
    overrides: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    policy_row: bool = True


SFT_EXPORT = ("--model.init_args.policy.name_or_path", "{run}/sft/export")
RM_EXPORT = ("--model.init_args.reward", "{run}/reward_model/export")
OFFLINE_QUICK = ("--trainer.max_steps", "25", "--data.num_train", "1000")
ALOL_VARIANTS = (
    "a_lol", "a_lol_kl", "a_lol_ref_free", "a_lol_seq", "nll", "r_gold", "r_lol", "wbc"
)  # fmt: skip


def _online(name: str, config: str, steps: int, quick_steps: int, *extra: str) -> DemoStage:
    """An online stage from the SFT export, ``steps`` optimiser steps (``quick_steps`` quick)."""
    overrides = (*SFT_EXPORT, "--trainer.max_steps", str(steps), *extra)
    return DemoStage(name, config, overrides, ("--trainer.max_steps", str(quick_steps)))


def _alol(variant: str) -> DemoStage:
    """One A-LoL-family stage; a_lol_kl runs with beta 0.1 (with 0 it would be a_lol_ref_free)."""
    kl = ("--model.init_args.kl_beta", "0.1") if variant == "a_lol_kl" else ()
    overrides = (*SFT_EXPORT, "--model.init_args.variant", variant, *kl)
    quick = (*OFFLINE_QUICK, "--data.num_val", "128")
    return DemoStage(variant, "alol/arithmetic.yaml", overrides, quick)


#: every stage, in the order the demo runs them: SFT first, the reward model from its export, then
#: the online methods, the A-LoL family, DPO and PRO, each from the SFT export
STAGES: tuple[DemoStage, ...] = (
    DemoStage(
        "sft",
        "sft/arithmetic.yaml",
        quick=("--trainer.max_steps", "300", "--trainer.val_check_interval", "150",
               "--data.num_train", "20000"),
    ),
    DemoStage(
        "reward_model",
        "reward_model/arithmetic.yaml",
        SFT_EXPORT,
        ("--trainer.max_steps", "100", "--trainer.val_check_interval", "50",
         "--data.num_train", "4000"),
        policy_row=False,
    ),
    _online("ppo", "ppo/arithmetic.yaml", 48, 8),
    _online("ppo_rm", "ppo/arithmetic_rm.yaml", 48, 8, *RM_EXPORT),
    _online("mappo", "mappo/arithmetic.yaml", 48, 8),
    _online("mappo_rm", "mappo/arithmetic_rm.yaml", 48, 8, *RM_EXPORT),
    _online("p3o", "p3o/arithmetic.yaml", 48, 8),
    _online("p3o_rm", "p3o/arithmetic_rm.yaml", 48, 8, *RM_EXPORT),
    _online("rloo", "rloo/arithmetic.yaml", 16, 4),
    _online("remax", "remax/arithmetic.yaml", 16, 4),
    _online("grpo", "grpo/arithmetic.yaml", 16, 4),
    *(_alol(variant) for variant in ALOL_VARIANTS),
    DemoStage("dpo", "dpo/arithmetic.yaml", SFT_EXPORT, (*OFFLINE_QUICK, "--data.num_val", "64")),
    DemoStage(
        "pro",
        "pro/arithmetic.yaml",
        SFT_EXPORT,
        ("--trainer.max_steps", "25", "--data.num_train", "600", "--data.num_val", "64"),
    ),
)  # fmt: skip


def registered_stages() -> list[DemoStage]:
    """The demo's stages, in the order they run."""
    return list(STAGES)


def fit_stage(
    stage: DemoStage, run: Path, quick: bool, edit: Callable[[object], None] | None = None
) -> tuple[object, float]:
    """Fit one stage through the CLI into ``run/<stage.name>``; returns the CLI and the fit's
    seconds. ``edit(cli)`` may change the built CLI (e.g. its callbacks) before the fit."""
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
    if edit is not None:
        edit(cli)
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
                reference = load_reference(run / "sft" / "export")
        else:
            rank_zero_info(f"\n=== demo stage: {stage.name} ({stage.config}) ===")
            try:
                cli, wall = fit_stage(stage, run, quick)
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


def load_reference(path: Path) -> torch.nn.Module:
    """The policy exported at ``path`` as a frozen reference (for the KL of later policies)."""
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
