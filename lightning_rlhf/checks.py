"""Range checks of hyperparameters: one call per parameter, one line naming class, parameter,
allowed range and value (``GRPO: kl_beta must be >= 0, got -1.0``).

The CLI prints that line and exits with code 2 (see ``lightning_rlhf.cli.main``).
"""

from __future__ import annotations


def check_range(
    owner: object,
    name: str,
    value: float | None,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> None:
    """Raise ``ValueError`` unless ``value`` lies in the range the bounds give (``None`` passes:
    an optional parameter left unset).

    Args:
        owner: the object (or a name) the parameter belongs to, for the message.
        name: the parameter's name as the config spells it.
        value: the value given; NaN is outside every range.
        ge, gt, le, lt: lower bound (inclusive / exclusive), upper bound (inclusive / exclusive).
    """
    if all(bound is None for bound in (ge, gt, le, lt)):
        raise ValueError("check_range: give at least one bound")
    if value is None:
        return
    inside = (
        (ge is None or value >= ge)
        and (gt is None or value > gt)
        and (le is None or value <= le)
        and (lt is None or value < lt)
    )
    if not inside:
        who = owner if isinstance(owner, str) else type(owner).__name__
        raise ValueError(f"{who}: {name} must be {_describe(ge, gt, le, lt)}, got {value}")


def _describe(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    """``>= 0``, ``> 0``, ``<= 1``, or an interval such as ``in (0, 1)`` / ``in [0, 1]``."""
    low, low_open = (gt, True) if gt is not None else (ge, False)
    high, high_open = (lt, True) if lt is not None else (le, False)
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    return f"{'<' if high_open else '<='} {high}"
