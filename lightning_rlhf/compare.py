"""``python -m lightning_rlhf compare --config configs/compare/<study>.yaml``: multi-seed studies.

A study is a list of runs (a name, an algorithm config under ``configs/`` and overrides), each
trained with every seed from one SFT start (trained once here, or an export given), then
evaluated on the task's held-out prompts against that SFT policy. Finished runs are reused (a run
whose ``result.json`` exists with the same arguments is not trained again). Writes into the
study's run directory:

- ``summary.csv`` / ``summary.md``: final reward (mean of the last ``window`` rollouts) ± 95%
  t-interval over seeds, rollouts to reach the baseline's final reward and the threshold,
  held-out accuracy / reward / KL, wall time per rollout, the critic's explained variance;
- ``curves.csv`` and ``curves_rollouts.png`` / ``curves_wall.png``: per-rollout reward (moving
  average) against rollouts and wall time, mean and 95% band over seeds;
- with a ``frontier`` section, ``frontier.csv`` / ``frontier.md`` / ``frontier.png``: each listed
  algorithm at several KL coefficients, held-out reward against KL to the SFT policy.

Runs are trained through :func:`lightning_rlhf.demo.fit_stage`, so a study runs exactly what
``python -m lightning_rlhf fit`` with the same config and overrides would.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.utilities import rank_zero_info

from lightning_rlhf.callbacks import evaluate_policy
from lightning_rlhf.callbacks.task_eval import TaskEval
from lightning_rlhf.cli_errors import ConfigError
from lightning_rlhf.compare_report import (
    final_value,
    fmt_ci,
    mean_ci,
    moving_average,
    plot_curves,
    plot_frontier,
    rollouts_to,
    write_table,
)
from lightning_rlhf.demo import CONFIGS, DemoStage, fit_stage, load_reference

DEFAULT_KL_KEY = "model.init_args.kl_beta"
"""The override key of a run's KL coefficient (DPO's is ``model.init_args.beta``)."""

NO_PROGRESS_BAR = ("--trainer.enable_progress_bar", "false")
RUN_ARGS = (
    "--trainer.max_steps", "-1", "--trainer.max_epochs", "1",
    "--trainer.check_val_every_n_epoch", "1", "--trainer.val_check_interval", "1.0",
    "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
)  # fmt: skip
"""Every run: one epoch of ``rollouts`` batches (``limit_train_batches``), no validation loop
(the study evaluates on held-out prompts itself), no progress bar."""

SUMMARY_COLUMNS = [
    "run", "seeds", "final_reward", "rollouts_to_baseline", "reached_baseline",
    "rollouts_to_threshold", "reached_threshold", "heldout_accuracy", "heldout_reward", "kl",
    "wall_s_per_rollout", "explained_variance",
]  # fmt: skip
FRONTIER_COLUMNS = ["run", "coefficient", "seeds", "heldout_reward", "kl", "heldout_accuracy"]


# ----------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class RunSpec:
    """One algorithm of a study.

    Attributes:
        name: its row and run directory.
        config: YAML path relative to ``configs/``.
        overrides: extra CLI arguments (``--key value`` pairs); they come after the study's
            ``--data.task_options``, so a run may train on other data (e.g. another noise level)
            while every run is evaluated on the study's task.
        rollouts: training batches (rollouts for online methods, steps for offline ones).
        kl_key: the override key of its KL coefficient (for the frontier).
        kl: the coefficient its config already uses (a frontier point at it reuses this run).
    """

    name: str
    config: str
    overrides: tuple[str, ...] = ()
    rollouts: int = 20
    kl_key: str = DEFAULT_KL_KEY
    kl: float | None = None


@dataclass(frozen=True)
class Study:
    """A study read from ``configs/compare/<study>.yaml`` (see :func:`load_study`)."""

    name: str
    task: str
    task_options: dict[str, Any]
    seeds: tuple[int, ...]
    sft: DemoStage | None
    sft_export: str | None
    runs: tuple[RunSpec, ...]
    baseline: str
    threshold: float | None = None
    window: int = 5
    eval_prompts: int = 200
    max_new_tokens: int = 8
    frontier_runs: tuple[str, ...] = ()
    frontier_coefficients: tuple[float, ...] = ()
    notes: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _args(overrides: Any, where: str) -> tuple[str, ...]:
    """Overrides as CLI arguments: a mapping ``{key: value}`` (dicts and lists as JSON) or a
    list of strings."""
    if overrides is None:
        return ()
    if isinstance(overrides, dict):
        out: list[str] = []
        for key, value in overrides.items():
            text = json.dumps(value) if isinstance(value, dict | list | bool) else str(value)
            out += [f"--{str(key).lstrip('-')}", text]
        return tuple(out)
    if isinstance(overrides, list) and all(isinstance(a, str | int | float) for a in overrides):
        return tuple(str(a) for a in overrides)
    raise ConfigError(f"{where}: overrides must be a mapping or a list of strings")


def _literal(args: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``args`` with braces doubled: :func:`fit_stage` expands ``{run}`` with ``str.format``,
    and a study's JSON values must reach the CLI as written."""
    return tuple(a.replace("{", "{{").replace("}", "}}") for a in args)


def _need(mapping: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in mapping:
        raise ConfigError(f"{where}: missing key {key!r}")
    value = mapping[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        kind_name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{where}: {key} must be a {kind_name}, got {value!r}")
    return value


def _run_spec(raw: Any, where: str, quick: dict) -> RunSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each run must be a mapping with name and config")
    unknown = sorted(set(raw) - {"name", "config", "overrides", "rollouts", "kl_key", "kl"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    name, config = _need(raw, "name", str, where), _need(raw, "config", str, where)
    if not (CONFIGS / config).is_file():
        raise ConfigError(f"{where}: config {config!r} not found under {CONFIGS}")
    rollouts = int(quick.get("rollouts", raw.get("rollouts", 20)))
    if rollouts < 1:
        raise ConfigError(f"{where}: rollouts must be >= 1, got {rollouts}")
    overrides = _args(raw.get("overrides"), where) + _args(quick.get("run_overrides"), where)
    kl = raw.get("kl")
    return RunSpec(
        name, config, overrides, rollouts, str(raw.get("kl_key", DEFAULT_KL_KEY)).lstrip("-"),
        None if kl is None else float(kl),
    )  # fmt: skip


def load_study(path: str | Path, quick: bool = False, size: dict | None = None) -> Study:
    """Read and check a study YAML; ``quick`` applies its ``quick:`` section (fewer seeds,
    rollouts and prompts, a shorter SFT), and ``size`` (keys ``seeds``, ``rollouts``,
    ``eval_prompts``, ``coefficients``) on top of that, as the command line's ``--seeds`` etc.
    Top-level keys starting with ``x-`` are ignored (a place for YAML anchors shared by runs).
    Bad input raises a one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"compare: no study config at {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study is a mapping (name, task, seeds, sft, runs, ...)")
    known = {"name", "task", "task_options", "seeds", "sft", "runs", "baseline", "threshold",
             "window", "eval_prompts", "max_new_tokens", "frontier", "quick", "notes"}  # fmt: skip
    unknown = sorted(k for k in set(raw) - known if not str(k).startswith("x-"))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {sorted(known)}")
    q = {**((raw.get("quick") or {}) if quick else {}), **(size or {})}
    runs_raw = _need(raw, "runs", list, str(path))
    runs = tuple(_run_spec(r, f"{path}: runs[{i}]", q) for i, r in enumerate(runs_raw))
    names = [r.name for r in runs]
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"{path}: run names must be unique and at least one, got {names}")
    baseline = str(raw.get("baseline", names[0]))
    if baseline not in names:
        raise ConfigError(f"{path}: baseline {baseline!r} is not one of the runs {names}")
    frontier = raw.get("frontier") or {}
    f_runs = tuple(frontier.get("runs", ()))
    missing = [n for n in f_runs if n not in names]
    if missing:
        raise ConfigError(f"{path}: frontier runs {missing} are not among the runs {names}")
    coefficients = tuple(float(c) for c in q.get("coefficients", frontier.get("coefficients", ())))
    if f_runs and not coefficients:
        raise ConfigError(f"{path}: frontier needs a list of coefficients")
    seeds = tuple(int(s) for s in q.get("seeds", _need(raw, "seeds", list, str(path))))
    if not seeds:
        raise ConfigError(f"{path}: seeds must be a non-empty list")
    sft_raw = _need(raw, "sft", dict, str(path))
    sft, export = None, sft_raw.get("export")
    if export is None:
        config = _need(sft_raw, "config", str, f"{path}: sft")
        sft = DemoStage(
            "sft", config, _args(sft_raw.get("overrides"), f"{path}: sft"),
            _args(q.get("sft_overrides"), f"{path}: quick"),
        )  # fmt: skip
    window = int(raw.get("window", 5))
    if window < 1:
        raise ConfigError(f"{path}: window must be >= 1, got {window}")
    return Study(
        name=str(raw.get("name", path.stem)) + ("_quick" if quick else ""),
        task=str(raw.get("task", "arithmetic")),
        task_options=dict(raw.get("task_options") or {}),
        seeds=seeds,
        sft=sft,
        sft_export=None if export is None else str(export),
        runs=runs,
        baseline=baseline,
        threshold=None if raw.get("threshold") is None else float(raw["threshold"]),
        window=min(window, int(q.get("window", window))),
        eval_prompts=int(q.get("eval_prompts", raw.get("eval_prompts", 200))),
        max_new_tokens=int(raw.get("max_new_tokens", 8)),
        frontier_runs=f_runs,
        frontier_coefficients=coefficients,
        notes=str(raw.get("notes", "")),
        source=str(path),
    )


# ----------------------------------------------------------------------------- one run


class RolloutCurve(L.Callback):
    """Per training batch (a rollout): its sampled reward, the cumulative responses and the
    training wall time (validation excluded), and the critic's explained variance when logged."""

    def __init__(self) -> None:
        self.points: list[dict[str, float]] = []
        self._start = 0.0
        self._responses = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        reward = metrics.get("rollout/reward")
        if reward is None:  # an offline method: no rollouts
            return
        self._responses += int(getattr(pl_module, "last_rollout_size", 0))
        point = {
            "rollout": len(self.points) + 1,
            "responses": self._responses,
            "wall_s": time.perf_counter() - self._start,
            "reward": float(reward),
        }
        for key, name in (("rollout/kl_k1", "kl"), ("train/explained_variance", "ev")):
            if key in metrics:
                point[name] = float(metrics[key])
        self.points.append(point)


def _seed_args(config: str, seed: int) -> tuple[str, ...]:
    """``--data.seed`` (the data's draw and order: an offline method is otherwise the same for
    every seed) and, when the config's model takes one, ``--model.init_args.seed``: the data
    module and the model must log the same ``seed`` hyperparameter."""
    args = ("--data.seed", str(seed))
    try:
        class_path = yaml.safe_load((CONFIGS / config).read_text())["model"]["class_path"]
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
    except (KeyError, TypeError, ValueError, ImportError, AttributeError) as err:
        raise ConfigError(f"{config}: cannot read the model's class_path: {err}") from err
    takes_seed = any(
        "seed" in inspect.signature(klass.__init__).parameters
        for klass in cls.__mro__
        if "__init__" in vars(klass)
    )
    return (*args, "--model.init_args.seed", str(seed)) if takes_seed else args


def _drop_task_eval(cli: Any) -> None:
    """The study evaluates every run itself (against the SFT policy): no TaskEval in the fit."""
    callbacks = cli.trainer.callbacks
    callbacks[:] = [c for c in callbacks if not isinstance(c, TaskEval)]


class _Runner:
    """Trains, evaluates and caches the runs of one study in ``out``."""

    def __init__(self, study: Study, out: Path, quick: bool) -> None:
        self.study, self.out, self.quick = study, out, quick
        self.reference: torch.nn.Module | None = None
        self.sft_path: Path | None = None
        self.done = 0

    def task_args(self) -> tuple[str, ...]:
        return ("--data.task_options", json.dumps(self.study.task_options))

    def evaluate(self, policy: torch.nn.Module, tokenizer: Any) -> dict[str, float]:
        return evaluate_policy(
            policy,
            tokenizer,
            self.study.task,
            reference=self.reference,
            num_prompts=self.study.eval_prompts,
            max_new_tokens=self.study.max_new_tokens,
            batch_size=min(self.study.eval_prompts, 250),
            task_options=self.study.task_options,
        )

    def prepare_sft(self) -> dict:
        """Train (or reuse, or take the given) SFT export; evaluate it once; load the reference."""
        study = self.study
        if study.sft_export is not None:
            self.sft_path = Path(study.sft_export)
            if not (self.sft_path / "config.json").is_file():
                raise ConfigError(f"{study.source}: sft.export {self.sft_path} is no model export")
        else:
            self.sft_path = self.out / "sft" / "export"
        result_path = self.out / "sft" / "result.json"
        if result_path.is_file() and (self.sft_path / "config.json").is_file():
            rank_zero_info(f"[compare] {study.name}: reusing the SFT start {self.sft_path}")
            self.reference = load_reference(self.sft_path)
            return json.loads(result_path.read_text())
        start = time.perf_counter()
        if study.sft_export is None:
            stage = DemoStage(
                study.sft.name, study.sft.config,
                _literal((*study.sft.overrides, *self.task_args(), *NO_PROGRESS_BAR)),
                _literal(study.sft.quick),
            )  # fmt: skip
            fit_stage(stage, self.out, self.quick, edit=_drop_task_eval)
        self.reference = load_reference(self.sft_path)
        tokenizer = _tokenizer(self.sft_path, study.task)
        result = {"name": "sft", "wall_s": time.perf_counter() - start}
        result.update(self.evaluate(self.reference, tokenizer))
        result_path.parent.mkdir(parents=True, exist_ok=True)
        result_path.write_text(json.dumps(result, indent=2))
        rank_zero_info(f"[compare] {study.name}: SFT start ready ({_short(result)})")
        return result

    def run(self, spec: RunSpec, seed: int, coefficient: float | None = None) -> dict:
        """One (run, seed[, KL coefficient]): reuse its result.json when the arguments match."""
        label = spec.name if coefficient is None else f"{spec.name}_kl{coefficient:g}"
        stage_name = f"runs/{label}/seed{seed}"
        args = [
            *self.task_args(), *spec.overrides, *RUN_ARGS,
            "--trainer.limit_train_batches", str(spec.rollouts),
            "--model.init_args.policy.name_or_path", str(self.sft_path),
            "--seed_everything", str(seed), *_seed_args(spec.config, seed),
        ]  # fmt: skip
        if coefficient is not None:
            args += [f"--{spec.kl_key}", str(coefficient)]
        path = self.out / stage_name / "result.json"
        if path.is_file():
            cached = json.loads(path.read_text())
            if cached.get("args") == args:
                return self._progress(cached, reused=True)
            rank_zero_info(f"[compare] {label} seed {seed}: arguments changed, training again")
        curve = RolloutCurve()

        def edit(cli: Any) -> None:
            _drop_task_eval(cli)
            cli.trainer.callbacks.append(curve)

        stage = DemoStage(stage_name, spec.config, _literal(args))
        cli, wall = fit_stage(stage, self.out, False, edit)
        result = {
            "name": label, "run": spec.name, "coefficient": coefficient, "seed": seed,
            "args": args, "wall_s": wall, "curve": curve.points,
        }  # fmt: skip
        result.update(self.evaluate(cli.model.policy, cli.model.tokenizer))
        path.write_text(json.dumps(result, indent=2, default=float))
        return self._progress(result, reused=False)

    def _progress(self, result: dict, reused: bool) -> dict:
        self.done += 1
        how = "reused" if reused else f"{result['wall_s']:.0f}s"
        print(
            f"[compare] {self.study.name}: {result['name']} seed {result['seed']} done "
            f"({how}; run {self.done}): {_short(result)}",
            flush=True,
        )
        return result


def _short(result: dict) -> str:
    keys = ("accuracy", "sampled_reward", "kl")
    return ", ".join(f"{k}={result[k]:.3f}" for k in keys if result.get(k) is not None)


def _tokenizer(export: Path, task: str) -> Any:
    """The export's own tokenizer when it has one, else the built-in task's."""
    from transformers import AutoTokenizer

    from lightning_rlhf.data.tasks import get_tokenizer

    try:
        return AutoTokenizer.from_pretrained(export)
    except (OSError, ValueError):
        return get_tokenizer(task)


# ----------------------------------------------------------------------------- the report


def summarize(study: Study, results: dict[str, list[dict]]) -> list[dict]:
    """The summary rows, one per run, from each run's per-seed results (see the module doc)."""
    w = study.window
    finals = {n: [final_value([p["reward"] for p in r["curve"]], w) for r in rs if r["curve"]]
              for n, rs in results.items()}  # fmt: skip
    target = mean_ci(finals.get(study.baseline, []))[0]
    rows = []
    for name, seeds in results.items():
        row: dict[str, Any] = {"run": name, "seeds": len(seeds)}
        row["final_reward"] = fmt_ci(*mean_ci(finals[name]))
        for key, threshold in (("baseline", target), ("threshold", study.threshold)):
            row[f"rollouts_to_{key}"], row[f"reached_{key}"] = _to_threshold(seeds, threshold, w)
        for column, key in (("heldout_accuracy", "accuracy"), ("heldout_reward", "sampled_reward"),
                            ("kl", "kl")):  # fmt: skip
            row[column] = fmt_ci(*mean_ci([r.get(key, math.nan) for r in seeds]))
        per_rollout = [r["curve"][-1]["wall_s"] / len(r["curve"]) for r in seeds if r["curve"]]
        row["wall_s_per_rollout"] = fmt_ci(*mean_ci(per_rollout), digits=2)
        ev = [final_value([p["ev"] for p in r["curve"] if "ev" in p], w) for r in seeds]
        row["explained_variance"] = fmt_ci(*mean_ci(ev))
        rows.append(row)
    return rows


def _to_threshold(seeds: list[dict], threshold: float | None, window: int) -> tuple[str, str]:
    """``rollouts ± CI`` over the seeds that reached ``threshold``, and ``k/n`` of them."""
    curves = [[p["reward"] for p in r["curve"]] for r in seeds if r["curve"]]
    if threshold is None or math.isnan(threshold) or not curves:
        return "", ""
    hits = [rollouts_to(c, threshold, window) for c in curves]
    reached = [h for h in hits if h is not None]
    return fmt_ci(*mean_ci(reached), digits=1), f"{len(reached)}/{len(curves)}"


def frontier_rows(results: dict[tuple[str, float], list[dict]]) -> list[dict]:
    """One row per (run, coefficient): held-out sampled reward and KL ± CI over seeds."""
    rows = []
    for (name, coefficient), seeds in sorted(results.items()):
        reward, reward_ci = mean_ci([r.get("sampled_reward", math.nan) for r in seeds])
        kl, kl_ci = mean_ci([r.get("kl", math.nan) for r in seeds])
        accuracy = fmt_ci(*mean_ci([r.get("accuracy", math.nan) for r in seeds]))
        rows.append({
            "run": name, "coefficient": coefficient, "seeds": len(seeds),
            "heldout_reward": fmt_ci(reward, reward_ci), "kl": fmt_ci(kl, kl_ci),
            "heldout_accuracy": accuracy, "_point": {"reward": reward, "reward_ci": reward_ci,
                                                     "kl": kl, "kl_ci": kl_ci,
                                                     "coefficient": coefficient},
        })  # fmt: skip
    return rows


def write_curves(study: Study, results: dict[str, list[dict]], out: Path) -> list[str]:
    """``curves.csv`` and the two PNGs; returns the plot files written."""
    lines = ["run,seed,rollout,responses,wall_s,reward,reward_smoothed"]
    by_rollout: dict[str, list] = {}
    by_wall: dict[str, list] = {}
    for name, seeds in results.items():
        for r in seeds:
            if not r["curve"]:
                continue
            rewards = [p["reward"] for p in r["curve"]]
            smooth = moving_average(rewards, study.window)
            for p, s in zip(r["curve"], smooth):
                lines.append(f"{name},{r['seed']},{p['rollout']},{p['responses']},"
                             f"{p['wall_s']:.3f},{p['reward']:.5f},{s:.5f}")  # fmt: skip
            by_rollout.setdefault(name, []).append(([p["rollout"] for p in r["curve"]], smooth))
            by_wall.setdefault(name, []).append(([p["wall_s"] for p in r["curve"]], smooth))
    (out / "curves.csv").write_text("\n".join(lines) + "\n")
    plots = []
    title = f"{study.name}: mean and 95% band over seeds (window {study.window})"
    if plot_curves(by_rollout, out / "curves_rollouts.png", "rollouts", title):
        plots.append("curves_rollouts.png")
    if plot_curves(by_wall, out / "curves_wall.png", "training wall time (s)", title):
        plots.append("curves_wall.png")
    return plots


def run_study(study: Study, out: Path, quick: bool = False) -> dict[str, Any]:
    """Train/reuse every (run, seed) and frontier point; write the tables and plots to ``out``.

    Returns:
        ``{"summary": rows, "frontier": rows, "plots": files, "wall_s": seconds}``.
    """
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runner = _Runner(study, out, quick)
    sft = runner.prepare_sft()
    results = {spec.name: [runner.run(spec, s) for s in study.seeds] for spec in study.runs}
    frontier: dict[tuple[str, float], list[dict]] = {}
    specs = {s.name: s for s in study.runs}
    for name in study.frontier_runs:
        spec = specs[name]
        for c in study.frontier_coefficients:
            same = spec.kl is not None and math.isclose(c, spec.kl)
            frontier[(name, c)] = results[name] if same else [
                runner.run(spec, s, c) for s in study.seeds
            ]  # fmt: skip
    summary = summarize(study, results)
    summary.insert(0, {"run": "sft (start)", "seeds": 1, "heldout_accuracy": sft.get("accuracy"),
                       "heldout_reward": sft.get("sampled_reward"), "kl": 0.0})  # fmt: skip
    title = (f"{study.name}: seeds {list(study.seeds)}, mean ± 95% t-interval; baseline "
             f"{study.baseline}; window {study.window}; threshold {study.threshold}")  # fmt: skip
    print("\n" + write_table(summary, SUMMARY_COLUMNS, out / "summary", title))
    plots = write_curves(study, results, out)
    f_rows = frontier_rows(frontier)
    if f_rows:
        print(write_table(f_rows, FRONTIER_COLUMNS, out / "frontier", f"{study.name}: frontier"))
        points: dict[str, list[dict]] = {}
        for row in f_rows:
            points.setdefault(row["run"], []).append(row["_point"])
        if plot_frontier(points, out / "frontier.png", f"{study.name}: reward vs KL"):
            plots.append("frontier.png")
    wall = time.perf_counter() - start
    (out / "study.json").write_text(json.dumps(
        {"study": study.name, "source": study.source, "seeds": list(study.seeds),
         "wall_s": wall, "plots": plots}, indent=2))  # fmt: skip
    print(f"[compare] {study.name}: finished in {wall:.0f}s; tables and plots in {out}")
    return {"summary": summary, "frontier": f_rows, "plots": plots, "wall_s": wall}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_rlhf compare", description=__doc__)
    parser.add_argument("--config", required=True, help="a study YAML (configs/compare/*.yaml)")
    parser.add_argument("--out", default=None, help="run directory (default runs/compare/<name>)")
    parser.add_argument("--quick", action="store_true", help="the study's tiny quick: size")
    parser.add_argument("--seeds", default=None, help="comma list replacing the study's seeds")
    parser.add_argument("--rollouts", type=int, default=None, help="rollouts (steps) of every run")
    parser.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts per run")
    parser.add_argument("--coefficients", default=None, help="comma list of frontier KL values")
    args = parser.parse_args(argv)
    torch.set_float32_matmul_precision("high")
    study = load_study(args.config, args.quick, _size(args))
    run_study(study, Path(args.out or f"runs/compare/{study.name}"), args.quick)


def _size(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's size options as a ``load_study(size=...)`` mapping."""
    size: dict[str, Any] = {}
    try:
        if args.seeds:
            size["seeds"] = [int(x) for x in args.seeds.split(",")]
        if args.coefficients:
            size["coefficients"] = [float(x) for x in args.coefficients.split(",")]
    except ValueError as err:
        raise ConfigError(f"compare: --seeds / --coefficients take comma lists: {err}") from err
    if args.rollouts is not None:
        size["rollouts"] = args.rollouts
    if args.eval_prompts is not None:
        size["eval_prompts"] = args.eval_prompts
    return size
