"""The A-LoL family of offline losses (Baheti et al., "Leftover Lunch: Advantage-based Offline
Reinforcement Learning for Language Models", ICLR 2024; losses/README.md §2).

The whole response is one action: every variant is a per-sequence loss built on the masked SUM
l(y|x) = sum_t m_t log pi(y_t); the batch loss is the mean over sequences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

Stats = dict[str, torch.Tensor]


@dataclass(frozen=True)
class _Inputs:
    """Validated fp32 inputs shared by the variants; ``logprobs`` is 0 at masked tokens."""

    logprobs: torch.Tensor  # (B, T) log pi_theta(y_t), carries the gradient
    ref_logprobs: torch.Tensor | None  # (B, T) log pi_ref(y_t), detached
    mask: torch.Tensor  # (B, T) bool
    rewards: torch.Tensor  # (B,)
    values: torch.Tensor | None  # (B,)
    clip_eps: float
    kl_beta: float
    gold_floor: float

    @property
    def seq_logprob(self) -> torch.Tensor:
        """l_theta(y|x) = sum_t m_t log pi_theta(y_t): (B,)."""
        return self.logprobs.sum(dim=1)


class _Terms(NamedTuple):
    """What a variant returns: the per-sequence loss (B,), the detached coefficient c (B, T) with
    d loss_b / d log pi_theta(y_t) = -c_bt (0 at masked tokens), and variant-specific stats."""

    loss: torch.Tensor
    coef: torch.Tensor
    stats: Stats


# --- shared helpers ------------------------------------------------------------------------------


@torch.no_grad()
def clamped_importance_weight(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.9,
    level: str = "sequence",
) -> torch.Tensor:
    """A-LoL's detached importance weight clamp(rho, 1 - eps, 1 + eps).

    A clamp of the weight, not PPO's min: it bounds the weight and never zeroes a gradient.

    Args:
        logprobs, ref_logprobs: (B, T) log pi_theta and log pi_ref of the response tokens.
        mask: (B, T) nonzero at valid tokens.
        level: "sequence": rho_seq = exp(sum_t m_t (log pi_theta - log pi_ref)), one per row;
            "token": rho_t = exp(log pi_theta(y_t) - log pi_ref(y_t)) per token, no product.
    Returns:
        (B,) fp32 for "sequence", (B, T) fp32 (0 at masked tokens) for "token"; no grad.
    """
    if level not in ("sequence", "token"):
        raise ValueError(f"level must be 'sequence' or 'token', got {level!r}")
    valid = mask.bool()
    log_ratio = torch.where(valid, logprobs.float() - ref_logprobs.float(), 0.0)  # (B, T)
    if level == "sequence":
        return log_ratio.sum(dim=1).exp().clamp(1.0 - clip_eps, 1.0 + clip_eps)  # (B,)
    return torch.where(valid, log_ratio.exp().clamp(1.0 - clip_eps, 1.0 + clip_eps), 0.0)


def _positive_advantage(inp: _Inputs) -> tuple[torch.Tensor, Stats]:
    """A+ = max(R - V, 0): (B,), detached, never normalised; stats on A = R - V."""
    adv = inp.rewards - inp.values  # (B,)
    stats = {"advantage": adv.mean(), "positive_frac": (adv > 0).float().mean()}
    return adv.clamp(min=0.0), stats


def _clip_frac(weight: torch.Tensor, valid: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """Fraction of valid weights sitting at a clamp bound (1 - eps or 1 + eps)."""
    at_bound = (weight <= 1.0 - clip_eps) | (weight >= 1.0 + clip_eps)
    return (at_bound & valid).float().sum() / valid.float().sum()


def _sequence_weight(inp: _Inputs) -> tuple[torch.Tensor, Stats]:
    """sg[clip(rho_seq, 1 - eps, 1 + eps)], rho_seq = exp(l_theta - l_ref): (B,)."""
    w = clamped_importance_weight(
        inp.logprobs, inp.ref_logprobs, inp.mask, clip_eps=inp.clip_eps, level="sequence"
    )
    rows = torch.ones_like(w, dtype=torch.bool)
    return w, {"importance_weight": w.mean(), "clip_frac": _clip_frac(w, rows, inp.clip_eps)}


def _token_weight(inp: _Inputs) -> tuple[torch.Tensor, Stats]:
    """sg[clip(rho_t, 1 - eps, 1 + eps)] per token, no product over tokens: (B, T), 0 at pads."""
    w = clamped_importance_weight(
        inp.logprobs, inp.ref_logprobs, inp.mask, clip_eps=inp.clip_eps, level="token"
    )
    mean = w.sum() / inp.mask.float().sum()
    return w, {"importance_weight": mean, "clip_frac": _clip_frac(w, inp.mask, inp.clip_eps)}


def _sequence_terms(inp: _Inputs, weight: torch.Tensor, stats: Stats) -> _Terms:
    """loss_b = -weight_b * l_theta(y_b) for a detached (B,) weight."""
    coef = weight[:, None] * inp.mask  # (B, T)
    return _Terms(-weight * inp.seq_logprob, coef, stats)


def _token_terms(inp: _Inputs, coef: torch.Tensor, stats: Stats) -> _Terms:
    """loss_b = -sum_t c_bt log pi_theta(y_t) for a detached (B, T) coefficient."""
    coef = coef * inp.mask  # (B, T)
    return _Terms(-(coef * inp.logprobs).sum(dim=1), coef, stats)


# --- the variants (losses/README.md §2, one row of the table each) ---------------------------


def _nll(inp: _Inputs) -> _Terms:
    """-l_theta: behaviour cloning of the data."""
    return _sequence_terms(inp, torch.ones_like(inp.rewards), {})


def _wbc(inp: _Inputs) -> _Terms:
    """-R * l_theta: reward-weighted behaviour cloning."""
    return _sequence_terms(inp, inp.rewards, {})


def _r_gold(inp: _Inputs) -> _Terms:
    """-R * sum_t m_t max(sg[pi_theta(y_t)], u) log pi_theta(y_t) (GOLD's per-token weight)."""
    prob = inp.logprobs.detach().exp().clamp(min=inp.gold_floor)  # (B, T)
    return _token_terms(inp, inp.rewards[:, None] * prob, {})


def _r_lol(inp: _Inputs) -> _Terms:
    """-R * sg[clip(rho_seq)] * l_theta."""
    w, stats = _sequence_weight(inp)
    return _sequence_terms(inp, inp.rewards * w, stats)


def _a_lol(inp: _Inputs) -> _Terms:
    """-A+ * sg[clip(rho_seq)] * l_theta: A-LoL proper."""
    a_pos, stats = _positive_advantage(inp)
    w, w_stats = _sequence_weight(inp)
    return _sequence_terms(inp, a_pos * w, stats | w_stats)


def _a_lol_ref_free(inp: _Inputs) -> _Terms:
    """-A+ * l_theta: importance weight fixed at 1."""
    a_pos, stats = _positive_advantage(inp)
    return _sequence_terms(inp, a_pos, stats)


def _a_lol_seq(inp: _Inputs) -> _Terms:
    """-A+ * sum_t m_t sg[clip(rho_t)] log pi_theta(y_t): per-token weights, no product."""
    a_pos, stats = _positive_advantage(inp)
    w, w_stats = _token_weight(inp)
    return _token_terms(inp, a_pos[:, None] * w, stats | w_stats)


def _a_lol_kl(inp: _Inputs) -> _Terms:
    """-A+ * l_theta + beta * (l_theta - sg[l_ref]); the KL term is differentiated, so the
    gradient is -(A+ - beta) * grad l_theta."""
    a_pos, stats = _positive_advantage(inp)
    seq_kl = inp.seq_logprob - inp.ref_logprobs.sum(dim=1)  # (B,)
    loss = -a_pos * inp.seq_logprob + inp.kl_beta * seq_kl
    coef = (a_pos - inp.kl_beta)[:, None] * inp.mask  # (B, T)
    return _Terms(loss, coef, stats | {"seq_kl": seq_kl.detach().mean()})


class _Variant(NamedTuple):
    fn: Callable[[_Inputs], _Terms]
    needs_ref: bool
    needs_values: bool


VARIANTS: dict[str, _Variant] = {
    "nll": _Variant(_nll, False, False),
    "wbc": _Variant(_wbc, False, False),
    "r_gold": _Variant(_r_gold, False, False),
    "r_lol": _Variant(_r_lol, True, False),
    "a_lol": _Variant(_a_lol, True, True),
    "a_lol_ref_free": _Variant(_a_lol_ref_free, False, True),
    "a_lol_seq": _Variant(_a_lol_seq, True, True),
    "a_lol_kl": _Variant(_a_lol_kl, True, True),
}


def alol_priorities(
    variant: str, rewards: torch.Tensor, values: torch.Tensor | None
) -> torch.Tensor:
    """Sampling weights of the training rows: A+ = max(R - V, 0) for the A-LoL variants,
    max(R, 0) for the reward-weighted baselines (wbc, r_gold, r_lol), 1 for nll.

    Args:
        rewards: (N,) R; values: (N,) V(x) (needed by the A-LoL variants).
    Returns:
        (N,) non-negative weights; rows with 0 are never trained on.
    """
    if VARIANTS[variant].needs_values:
        return (rewards - values).clamp(min=0)
    if variant == "nll":
        return torch.ones_like(rewards)
    return rewards.clamp(min=0)


# --- validation and the public function -----------------------------------------------------------


def _check_shapes(logprobs, ref_logprobs, mask, rewards, values) -> None:
    """One-line ValueErrors for tensors whose shapes do not fit (B, T) / (B,)."""
    if logprobs.dim() != 2:
        raise ValueError(f"alol_loss: logprobs must be (B, T), got {tuple(logprobs.shape)}")
    B = logprobs.shape[0]
    for name, t, shape in (
        ("mask", mask, logprobs.shape),
        ("ref_logprobs", ref_logprobs, logprobs.shape),
        ("rewards", rewards, (B,)),
        ("values", values, (B,)),
    ):
        if t is not None and t.shape != shape:
            raise ValueError(f"alol_loss: {name} must be {tuple(shape)}, got {tuple(t.shape)}")


def _check_rows(mask: torch.Tensor, rewards: torch.Tensor, values: torch.Tensor | None) -> None:
    """One-line ValueError naming the first row with an empty mask or a non-finite R / V."""
    empty = ~mask.any(dim=1)
    bad_r = ~torch.isfinite(rewards)
    bad_v = ~torch.isfinite(values) if values is not None else torch.zeros_like(bad_r)
    bad = empty | bad_r | bad_v  # (B,)
    if not bad.any():  # one host sync for the common case
        return
    b = int(bad.nonzero()[0, 0])
    reason = (
        "an empty mask" if empty[b] else "a non-finite reward" if bad_r[b] else "a NaN/inf value"
    )
    raise ValueError(f"alol_loss: row {b} has {reason}")


def alol_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    values: torch.Tensor | None,
    *,
    variant: str,
    clip_eps: float = 0.9,
    kl_beta: float = 0.0,
    gold_floor: float = 0.1,
) -> tuple[torch.Tensor, Stats]:
    """A-LoL family loss (losses/README.md §2): mean over sequences of the variant's
    per-sequence loss.

    Args:
        logprobs: (B, T) log pi_theta(y_t) of the response tokens (values at masked tokens ignored).
        ref_logprobs: (B, T) log pi_ref(y_t), or None for variants that do not use it; detached.
        mask: (B, T) nonzero at response tokens; every row needs at least one.
        rewards: (B,) finite scalar rewards R of whole responses.
        values: (B,) finite value estimates V(x), or None for variants without an advantage.
        variant: one of ``VARIANTS``: nll, wbc, r_gold, r_lol, a_lol, a_lol_ref_free, a_lol_seq,
            a_lol_kl.
        clip_eps: importance weights are clamped (detached) to [1 - eps, 1 + eps]; a clamp bounds
            the weight and never zeroes a gradient.
        kl_beta: coefficient of the sequence KL term of a_lol_kl.
        gold_floor: u in r_gold's per-token weight max(sg[pi_theta(y_t)], u).
    Returns:
        loss: fp32 scalar; stats (detached scalars): ``loss``, ``logprob`` (mean l_theta),
        ``weight`` (mean over sequences of the token-mean of the gradient coefficient c, where
        d loss_b / d log pi_theta(y_t) = -c_bt), and where they apply ``advantage`` (mean R - V),
        ``positive_frac`` (fraction with R > V), ``importance_weight`` (mean clamped weight),
        ``clip_frac`` (fraction of weights at a bound), ``seq_kl`` (a_lol_kl).
    Raises:
        ValueError: an unknown variant, a missing ref_logprobs / values the variant needs,
            mismatched shapes, or a row with an empty mask or a non-finite reward / value.
    """
    if variant not in VARIANTS:
        raise ValueError(f"alol_loss: unknown variant {variant!r}; choose from {list(VARIANTS)}")
    spec = VARIANTS[variant]
    if spec.needs_ref and ref_logprobs is None:
        raise ValueError(f"alol_loss: variant {variant!r} needs ref_logprobs, got None")
    if spec.needs_values and values is None:
        raise ValueError(f"alol_loss: variant {variant!r} needs values, got None")
    _check_shapes(logprobs, ref_logprobs, mask, rewards, values)
    valid = mask.bool()  # (B, T)
    _check_rows(valid, rewards, values)
    inp = _Inputs(
        logprobs=torch.where(valid, logprobs.float(), 0.0),
        ref_logprobs=None
        if ref_logprobs is None
        else torch.where(valid, ref_logprobs.detach().float(), 0.0),
        mask=valid,
        rewards=rewards.detach().float(),
        values=None if values is None else values.detach().float(),
        clip_eps=float(clip_eps),
        kl_beta=float(kl_beta),
        gold_floor=float(gold_floor),
    )
    terms = spec.fn(inp)
    loss = terms.loss.mean()
    weight = terms.coef.sum(dim=1) / valid.float().sum(dim=1)  # (B,) token-mean coefficient
    stats = {
        "loss": loss.detach(),
        "logprob": inp.seq_logprob.detach().mean(),
        "weight": weight.mean(),
        **terms.stats,
    }
    return loss, {k: v.detach() for k, v in stats.items()}
