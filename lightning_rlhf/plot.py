"""Plots (matplotlib, from the ``demo`` extra): training curves from a run's ``metrics.csv``
(``python -m lightning_rlhf plot RUN_DIR_OR_CSV``) and the demo's reward-vs-KL scatter."""

from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

INSTALL = "pip install 'lightning-rlhf[demo]'"
ONLINE = ("ppo", "mappo", "p3o", "rloo", "remax", "grpo")
#: the demo's families, in legend order, each with its colour map
FAMILIES = (
    ("SFT", "Greys"),
    ("online RL, task reward", "Blues"),
    ("online RL, learned reward model", "Purples"),
    ("offline: A-LoL family", "Greens"),
    ("offline: preferences (DPO, PRO)", "Oranges"),
)
MARKERS = "osD^v<>phX*P"


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or None (with one line) when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def family(name: str) -> str:
    """The family of a demo row name (see :data:`FAMILIES`)."""
    if name == "sft":
        return FAMILIES[0][0]
    if name.endswith("_rm"):
        return FAMILIES[2][0]
    if name in ONLINE:
        return FAMILIES[1][0]
    if name in ("dpo", "pro"):
        return FAMILIES[4][0]
    return FAMILIES[3][0]


def point_styles(names: list[str]) -> dict[str, tuple[int, str, str, float, str]]:
    """``name -> (family index, family, colour map, shade, marker)``: a colour map per family,
    and within a family a shade and a marker of its own per row (distinct up to 11 a family)."""
    styles = {}
    for index, (fam, cmap_name) in enumerate(FAMILIES):
        members = [n for n in names if family(n) == fam]
        for i, name in enumerate(members):
            shade = 0.45 + 0.5 * i / max(len(members) - 1, 1)
            styles[name] = (index, fam, cmap_name, shade, MARKERS[i % len(MARKERS)])
    return styles


def reward_vs_kl(rows: list[dict], path: Path) -> Path | None:
    """The demo's scatter: held-out greedy reward against KL to the SFT policy, one colour map
    per family and one marker per row within it, the teacher's reward as a reference line."""
    plt = _pyplot()
    if plt is None:
        rank_zero_info(f"matplotlib is not installed: no {path.name} ({INSTALL})")
        return None
    points = [r for r in rows if _number(r.get("kl")) and _number(r.get("reward"))]
    styles = point_styles([r["algorithm"] for r in points])
    fig, ax = plt.subplots(figsize=(9.5, 5))
    for r in sorted(points, key=lambda r: styles[r["algorithm"]][0]):  # legend by family
        _, fam, cmap_name, shade, marker = styles[r["algorithm"]]
        ax.scatter(r["kl"], r["reward"], s=46, marker=marker, color=plt.get_cmap(cmap_name)(shade),
                   edgecolor="black", linewidth=0.4, label=f"{fam}: {r['algorithm']}")  # fmt: skip
    teacher = next((r for r in rows if str(r.get("algorithm", "")).startswith("teacher")), None)
    if teacher is not None and _number(teacher.get("reward")):
        ax.axhline(teacher["reward"], color="0.4", linestyle="--", linewidth=1,
                   label="teacher (the data)")  # fmt: skip
    ax.set_xlabel("KL to SFT (nats): mean over sampled responses of sum_t log pi/pi_SFT")
    ax.set_ylabel("held-out reward, greedy decoding\n(1 = exact answer, partial credit per digit)")
    ax.set_title("arithmetic with noisy demonstrations: reward vs KL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _number(value) -> bool:
    try:
        return value not in (None, "") and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def read_metrics(source: Path) -> tuple[Path, dict[str, list[tuple[float, float]]]]:
    """``metrics.csv`` (the file, or the one in a run directory) as ``{metric: [(step, value)]}``
    for every column with a number (``step`` and ``epoch`` are the x axis, not curves)."""
    path = source / "metrics.csv" if source.is_dir() else source
    if not path.is_file():
        raise FileNotFoundError(f"plot: no metrics.csv at {source} (give a run directory or CSV)")
    curves: dict[str, list[tuple[float, float]]] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            step = float(row.get("step") or "nan")
            for key, value in row.items():
                if key not in ("step", "epoch") and _number(value) and math.isfinite(step):
                    curves.setdefault(key, []).append((step, float(value)))
    return path, curves


def training_curves(source: Path, out: Path | None = None, metrics: str | None = None) -> Path:
    """One panel per metric of ``metrics.csv`` (those matching the regex ``metrics``), written
    as a PNG (default: ``curves.png`` beside the CSV); returns its path."""
    plt = _pyplot()
    if plt is None:
        raise SystemExit(f"plot: matplotlib is not installed ({INSTALL})")
    path, curves = read_metrics(source)
    names = sorted(k for k, v in curves.items() if len(v) > 1)
    if metrics:
        names = [k for k in names if re.search(metrics, k)]
    if not names:
        raise ValueError(f"plot: no metric with two or more values in {path}" +
                         (f" matching {metrics!r}" if metrics else ""))  # fmt: skip
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps, values = zip(*sorted(curves[name]))
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, linewidth=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(str(path), fontsize=9)
    fig.tight_layout()
    out = out or path.with_name("curves.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m lightning_rlhf plot RUN_DIR_OR_METRICS_CSV [--out PNG] [--metrics REGEX]``."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_rlhf plot",
        description="Training curves of a run (its metrics.csv) as a PNG.",
    )
    parser.add_argument("source", type=Path, help="a run directory or its metrics.csv")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default curves.png)")
    parser.add_argument("--metrics", default=None, help="regex of metrics to plot (default all)")
    args = parser.parse_args(argv)
    print(f"wrote {training_curves(args.source, args.out, args.metrics)}")
