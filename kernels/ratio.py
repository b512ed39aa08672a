"""Clipped importance-ratio losses: the PPO / MA-PPO token surrogate, A-LoL weights, P3O.

Ratios are always formed in log space. ``ppo_clip_loss`` has a fused Triton forward+backward
(masked reduction and stats in one pass) and an eager torch backend; the helpers for A-LoL and
P3O act on (B,) sequence quantities and are plain torch.
"""

from __future__ import annotations

import torch

from kernels._backend import resolve_backend
from kernels.macro_gae import segment_index

REDUCTIONS = ("token_mean", "seq_mean", "sum")
RATIO_LEVELS = ("token", "segment")


def segment_sum(x: torch.Tensor, segment_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over each macro action and broadcast the sum to its tokens.

    Args:
        x: (B, T) float; masked positions are ignored.
        segment_ids, mask: (B, T), as in ``kernels.macro_gae``.
    Returns:
        (B, T) in x's dtype, 0 at masked positions. Differentiable w.r.t. ``x``.
    """
    valid = mask.bool()
    k, _ = segment_index(segment_ids, valid)
    x = torch.where(valid, x, 0.0)
    sums = torch.zeros_like(x).scatter_add(1, k, x)  # (B, T): at most T macros per row
    return torch.where(valid, sums.gather(1, k), 0.0)


def _reduction_weights(mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """(B, T) fp32 weight of each token's loss in the scalar loss (0 at masked tokens)."""
    m = mask.float()
    if reduction == "sum":
        return m
    if reduction == "token_mean":
        return m / m.sum().clamp(min=1.0)
    per_row = m.sum(dim=1, keepdim=True)  # (B, 1)
    rows = (per_row > 0).sum().clamp(min=1)
    return m / (per_row.clamp(min=1.0) * rows)


def _ppo_stats(log_ratio, ratio, clipped_active, valid) -> dict[str, torch.Tensor]:
    """Detached stats over valid tokens; all 0 when nothing is valid."""
    n = valid.sum().clamp(min=1)
    k3 = ratio - 1.0 - log_ratio  # k3 estimator of KL(pi_old || pi_theta)
    has = bool(valid.any())
    big = torch.finfo(ratio.dtype).max
    stats = {
        "clip_frac": (clipped_active & valid).sum() / n,
        "approx_kl": torch.where(valid, k3, 0.0).sum() / n,
        "ratio_mean": torch.where(valid, ratio, 0.0).sum() / n,
        "ratio_min": torch.where(valid, ratio, big).min() if has else ratio.new_zeros(()),
        "ratio_max": torch.where(valid, ratio, -big).max() if has else ratio.new_zeros(()),
    }
    stats["approx_kl_k3"] = stats["approx_kl"]
    return {key: v.detach().float() for key, v in stats.items()}


def _ppo_clip_loss_torch(logprobs, old_logprobs, advantages, mask, clip_low, clip_high,
                         ratio_level, segment_ids, reduction):
    valid = mask.bool()
    log_ratio = logprobs.float() - old_logprobs.float()  # (B, T) fp32
    if ratio_level == "segment":
        log_ratio = segment_sum(log_ratio, segment_ids, valid)
    log_ratio = torch.where(valid, log_ratio, 0.0)
    ratio = torch.exp(log_ratio)
    adv = torch.where(valid, advantages.float(), 0.0)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    loss = (per_token * _reduction_weights(valid, reduction)).sum()
    stats = _ppo_stats(log_ratio.detach(), ratio.detach(), clipped > unclipped, valid)
    return loss, stats


def _check_ppo(logprobs, old_logprobs, advantages, mask, ratio_level, segment_ids, reduction):
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be (B, T), got shape {tuple(logprobs.shape)}")
    for name, t in (("old_logprobs", old_logprobs), ("advantages", advantages), ("mask", mask)):
        if t.shape != logprobs.shape:
            raise ValueError(f"{name} must have the shape of logprobs {tuple(logprobs.shape)}, "
                             f"got {tuple(t.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {ratio_level!r}")
    if ratio_level == "segment" and (segment_ids is None or segment_ids.shape != logprobs.shape):
        raise ValueError("ratio_level='segment' needs segment_ids of shape (B, T)")


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ratio_level: str = "token",
    segment_ids: torch.Tensor | None = None,
    reduction: str = "token_mean",
    backend: str = "auto",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (ALGORITHMS.md 4; MA-PPO's macro variant, section 5).

    Per token: max(-A * rho, -A * clamp(rho, 1 - clip_low, 1 + clip_high)), rho = exp(log pi_theta
    - log pi_old). ``ratio_level="segment"`` uses one ratio per macro action (the sum of its
    tokens' log-ratios, i.e. the paper's product of token ratios), broadcast to its tokens.

    Args:
        logprobs: (B, T) log pi_theta of the taken tokens (fp32/bf16/fp16); the only input with
            a gradient.
        old_logprobs: (B, T) log pi_old (rollout policy), detached.
        advantages: (B, T) per-token advantages, detached.
        mask: (B, T) nonzero at valid tokens.
        reduction: "token_mean" (sum over valid tokens / their count, whole batch) | "seq_mean"
            (mean over rows with a valid token of each row's token mean) | "sum".
        segment_ids: (B, T) int, needed for ``ratio_level="segment"``.
    Returns:
        loss: fp32 scalar (0 with zero gradient when nothing is valid); stats: detached fp32
        scalars clip_frac (clipped branch active and different), approx_kl (= approx_kl_k3, the
        k3 estimator rho - 1 - log rho of KL(pi_old || pi_theta)), ratio_mean, ratio_min,
        ratio_max, over valid tokens.
    """
    _check_ppo(logprobs, old_logprobs, advantages, mask, ratio_level, segment_ids, reduction)
    args = (logprobs, old_logprobs, advantages, mask, float(clip_low), float(clip_high),
            ratio_level, segment_ids, reduction)
    if resolve_backend(backend, logprobs, old_logprobs, advantages, mask) == "triton":
        return _ppo_clip_loss_triton(*args)
    return _ppo_clip_loss_torch(*args)


def _ppo_clip_loss_triton(*args):
    raise NotImplementedError("the Triton ppo_clip_loss kernel is not written yet")
