"""Statistics, tables and plots of ``python -m lightning_rlhf compare`` (see
:mod:`lightning_rlhf.compare`): 95% t-intervals over seeds, smoothed learning curves, rollouts to a
reward threshold, CSV/Markdown tables and PNG plots (when matplotlib is installed).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

T_975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
)  # fmt: skip
"""The 97.5% quantile of Student's t with 1..30 degrees of freedom (two-sided 95%)."""


def t_critical(df: int) -> float:
    """The two-sided 95% critical value of Student's t with ``df`` >= 1 degrees of freedom (a
    table to 30, then the Cornish-Fisher expansion around 1.959964, good to 1e-4)."""
    if df < 1:
        raise ValueError(f"t_critical: need df >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% t-interval half width over seeds: ``t(n-1) * s / sqrt(n)`` with the sample
    (n - 1) standard deviation. NaNs are dropped; no value gives (nan, nan), one (x, nan)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return mean, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    return mean, t_critical(len(xs) - 1) * sd / math.sqrt(len(xs))


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start): (T,) -> (T,)."""
    if window < 1:
        raise ValueError(f"moving_average: window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def rollouts_to(values: Sequence[float], threshold: float, window: int) -> int | None:
    """The first rollout (1-based) whose trailing ``window``-rollout mean reaches ``threshold``;
    None when the curve never does."""
    for i, v in enumerate(moving_average(values, window)):
        if v >= threshold - 1e-12:
            return i + 1
    return None


def final_value(values: Sequence[float], window: int) -> float:
    """The mean of the last ``window`` values (the curve's final reward); NaN for no values."""
    tail = list(values)[-window:]
    return sum(tail) / len(tail) if tail else math.nan


def band(curves: Sequence[Sequence[float]]) -> tuple[list[float], list[float], list[float]]:
    """Mean and 95% t-band over seeds at every index the curves share: lists of length
    ``min(len(c))``; where the half width is undefined (one seed) the band is the mean."""
    length = min((len(c) for c in curves), default=0)
    mean, low, high = [], [], []
    for i in range(length):
        m, h = mean_ci([c[i] for c in curves])
        h = 0.0 if math.isnan(h) else h
        mean.append(m)
        low.append(m - h)
        high.append(m + h)
    return mean, low, high


def fmt_ci(mean: float, half: float, digits: int = 3) -> str:
    """``0.930 ± 0.012`` (or just the mean when the half width is undefined; "" for NaN)."""
    if mean is None or math.isnan(mean):
        return ""
    if half is None or math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def write_table(rows: list[dict], columns: list[str], stem: Path, title: str = "") -> str:
    """``<stem>.csv`` and ``<stem>.md`` of ``rows`` (missing cells empty); returns the Markdown."""
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [title, ""] if title else []
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    stem.with_suffix(".md").write_text(text)
    return text


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or None (logged once) when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        rank_zero_info("matplotlib is not installed: no plots (pip install 'lightning-rlhf[demo]')")
        return None
    return plt


def plot_curves(
    curves: dict[str, list[tuple[list[float], list[float]]]],
    path: Path,
    xlabel: str,
    title: str,
) -> bool:
    """Mean reward with its 95% band over seeds, one line per name.

    Args:
        curves: name -> one (x, reward) pair of equal-length lists per seed; x is averaged over
            seeds (rollouts are equal; wall times differ slightly).
    Returns:
        whether a PNG was written (False without matplotlib or without any curve).
    """
    plt = _pyplot()
    drawn = {k: v for k, v in curves.items() if v and min(len(x) for x, _ in v) > 0}
    if plt is None or not drawn:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, seeds in drawn.items():
        xs, _, _ = band([x for x, _ in seeds])
        mean, low, high = band([y for _, y in seeds])
        (line,) = ax.plot(xs, mean, label=f"{name} (n={len(seeds)})")
        ax.fill_between(xs, low, high, alpha=0.2, color=line.get_color())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("reward (sampled, moving average)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_frontier(points: dict[str, list[dict]], path: Path, title: str) -> bool:
    """Held-out reward against KL to the SFT policy, one line per algorithm over its KL
    coefficients, with 95% error bars both ways. ``points``: name -> rows with ``kl``,
    ``kl_ci``, ``reward``, ``reward_ci``, ``coefficient``."""
    plt = _pyplot()
    if plt is None or not points:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, rows in points.items():
        rows = sorted(rows, key=lambda r: r["kl"])
        ax.errorbar(
            [r["kl"] for r in rows],
            [r["reward"] for r in rows],
            xerr=[_zero_nan(r["kl_ci"]) for r in rows],
            yerr=[_zero_nan(r["reward_ci"]) for r in rows],
            marker="o",
            capsize=3,
            label=name,
        )
        for r in rows:
            ax.annotate(f"{r['coefficient']:g}", (r["kl"], r["reward"]), fontsize=6)
    ax.set_xlabel("KL(policy || SFT) per response on held-out prompts (nats)")
    ax.set_ylabel("held-out reward (sampled)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _zero_nan(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else x
