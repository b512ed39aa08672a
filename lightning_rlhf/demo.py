"""``python -m lightning_rlhf demo``: the embedded task end to end, then a comparison table.

Trains SFT on the arithmetic task's noisy demonstrations with a tiny model from scratch, then the
reward model, then every algorithm in :data:`STAGES` (the demo's one table: a config under
``configs/`` plus overrides), each through the same ``fit`` machinery. The algorithms know nothing
of the demo. Writes
``results.md`` (with the ``fit`` command of each row), ``results.csv`` and ``reward_vs_kl.png``
into the run directory (``runs/`` by default, where the configs look for the SFT and reward-model
exports), and keeps only what the table and later stages need there (checkpoints of finished
stages are deleted unless ``--keep-checkpoints``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_rlhf.callbacks import evaluate_policy
from lightning_rlhf.callbacks.progress import format_duration
from lightning_rlhf.data.tasks import get_task
from lightning_rlhf.models import frozen_copy
from lightning_rlhf.plot import reward_vs_kl

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PLOT = "reward_vs_kl.png"
#: the demo's run directory: where every config under configs/ looks for the SFT and RM exports
DEFAULT_OUT = "runs"
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


def stage_args(stage: DemoStage, run: Path, quick: bool, configs: Path = CONFIGS) -> list[str]:
    """The ``fit`` arguments of a stage (the demo's overrides, ``{run}`` expanded)."""
    pairs = ["--config", str(configs / stage.config)]
    pairs += ["--trainer.default_root_dir", str(run / stage.name)]
    pairs += [a.format(run=run) for a in stage.overrides]
    if quick:
        pairs += [a.format(run=run) for a in stage.quick]
    options: dict[str, str] = {}  # a repeated option keeps its first place and its last value
    for key, value in zip(pairs[::2], pairs[1::2], strict=True):
        options[key] = value
    return [x for item in options.items() for x in item]


def fit_command(stage: DemoStage, run: Path, quick: bool) -> str:
    """The shell command that reproduces a stage from the repository root."""
    args = stage_args(stage, run, quick, configs=Path("configs"))
    return shlex.join(["python", "-m", "lightning_rlhf", "fit", *args])


def fit_stage(
    stage: DemoStage, run: Path, quick: bool, edit: Callable[[object], None] | None = None
) -> tuple[object, float]:
    """Fit one stage through the CLI into ``run/<stage.name>``; returns the CLI and the fit's
    seconds. ``edit(cli)`` may change the built CLI (e.g. its callbacks) before the fit."""
    from lightning_rlhf.cli import RLHFCLI

    cli = RLHFCLI(args=stage_args(stage, run, quick), run=False)
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


def write_results(rows: list[dict], run: Path, commands: dict[str, str] | None = None) -> None:
    """results.md (the table, then the ``fit`` command of each row), results.csv, and
    reward_vs_kl.png when matplotlib is installed. Written after every stage, printed at the end
    (:func:`print_summary`)."""
    columns = COLUMNS + [c for c in ("pairwise_accuracy", "error") if any(c in r for r in rows)]
    with (run / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    text = f"Measured with {environment()}.\n\n" + markdown_table(rows, columns)
    if commands:
        text += "\n\nEach row again, from the repository root:\n\n" + "\n".join(
            f"- {name}: `{command}`" for name, command in commands.items()
        )
    (run / "results.md").write_text(text + "\n")
    reward_vs_kl(rows, run / PLOT)


def environment() -> str:
    """The versions and machine a table was measured with (results.md's first line): the demo's
    numbers depend on them (the same seed gives other numbers under other versions)."""
    import importlib.metadata as metadata
    import os
    import platform

    names = ("torch", "transformers", "lightning", "datasets")
    versions = ", ".join(f"{n} {metadata.version(n)}" for n in names)
    return (
        f"python {platform.python_version()}, {versions} on {platform.system()} "
        f"{platform.machine()} with {os.cpu_count()} CPU cores"
    )


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def print_summary(rows: list[dict], run: Path) -> None:
    """The table once, at the end, and where the files are."""
    columns = COLUMNS + [c for c in ("pairwise_accuracy", "error") if any(c in r for r in rows)]
    print("\n" + markdown_table(rows, columns) + "\n")
    plot = run / PLOT
    print(f"table and commands: {run / 'results.md'}\nCSV: {run / 'results.csv'}")
    print(f"plot: {plot}" if plot.exists() else "plot: none (pip install 'lightning-rlhf[demo]')")


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _selected(only: list[str] | None) -> list[DemoStage]:
    """The stages to run: ``only`` (sft and reward_model always, later stages start from them),
    after checking every name in ``only`` is a stage."""
    stages = registered_stages()
    names = [s.name for s in stages]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise ValueError(
            f"demo --only: unknown stage {', '.join(map(repr, unknown))}; the stages are: "
            + ", ".join(names)
        )
    keep = set(only or names) | {"sft", "reward_model"}
    return [s for s in stages if s.name in keep]


def _announce(k: int, stages: list[DemoStage], walls: list[float], start: float) -> None:
    stage, n = stages[k - 1], len(stages)
    eta = ""
    if walls:  # the mean stage so far, times the stages left
        eta = f", ETA ~{format_duration(sum(walls) / len(walls) * (n - k + 1))}"
    elapsed = format_duration(time.perf_counter() - start)
    rank_zero_info(
        f"\n=== demo stage {k} of {n}: {stage.name} ({stage.config}) | {elapsed} elapsed{eta} ==="
    )


def _drop_checkpoints(stage_dir: Path) -> None:
    """Delete a finished stage's checkpoints (its export and row stay): the table does not need
    them, and they are most of a demo's disk use."""
    checkpoints = stage_dir / "checkpoints"
    if checkpoints.is_dir():
        size = sum(p.stat().st_size for p in checkpoints.rglob("*") if p.is_file())
        shutil.rmtree(checkpoints)
        mib = size / 2**20
        rank_zero_info(f"removed {checkpoints} ({mib:.1f} MiB; --keep-checkpoints keeps them)")


def run_demo(
    run: Path,
    quick: bool = False,
    only: list[str] | None = None,
    eval_prompts: int = 500,
    reuse: bool = False,
    keep_checkpoints: bool = False,
) -> list[dict]:
    """Train and evaluate every stage; return the table's rows (also written to ``run``).

    With ``reuse``, a stage whose ``row.json`` and ``export/`` already exist in ``run`` is not
    trained again: its row is read back (and the SFT export reloaded as the KL reference).
    """
    stages = _selected(only)
    run.mkdir(parents=True, exist_ok=True)
    rows, reference, walls, start = [_teacher_row(eval_prompts)], None, [], time.perf_counter()
    commands = {s.name: fit_command(s, run, quick) for s in stages}
    for k, stage in enumerate(stages, start=1):
        done = run / stage.name / "row.json"
        if reuse and done.exists() and (run / stage.name / "export").exists():
            rank_zero_info(f"=== demo stage {k} of {len(stages)}: {stage.name}: reusing {done} ===")
            rows.append(json.loads(done.read_text()))
            if stage.name == "sft":
                reference = load_reference(run / "sft" / "export")
            continue
        _announce(k, stages, walls, start)
        began = time.perf_counter()
        try:
            cli, wall = fit_stage(stage, run, quick)
        except Exception as err:  # one broken stage must not cost the others their rows
            if stage.name in ("sft", "reward_model"):
                raise  # every later stage starts from these
            logging.getLogger(__name__).exception("demo stage %s failed", stage.name)
            rows.append({"algorithm": stage.name, "error": _first_line(err)})
            write_results(rows, run, commands)
            continue
        rows.append(_row(stage, cli, wall, reference, eval_prompts))
        if stage.name == "sft":
            reference = frozen_copy(cli.model.policy)
        if not keep_checkpoints:
            _drop_checkpoints(run / stage.name)
        walls.append(time.perf_counter() - began)
        write_results(rows, run, commands)
    write_results(rows, run, commands)
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
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="run directory (default runs, where the configs look)"
    )
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
    parser.add_argument(
        "--keep-checkpoints", action="store_true", help="keep each stage's checkpoints/"
    )
    args = parser.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    _selected(only)  # an unknown stage name fails here, before anything runs
    torch.set_float32_matmul_precision("high")
    run = Path(args.out)
    rows = run_demo(run, args.quick, only, args.eval_prompts, args.reuse, args.keep_checkpoints)
    print_summary(rows, run)
    failed = [r["algorithm"] for r in rows if "error" in r]
    if failed:
        raise SystemExit(f"demo: stages failed: {', '.join(failed)} (see results.md and the log)")
