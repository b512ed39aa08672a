"""The clipped importance-ratio surrogate of PPO / MA-PPO (token or macro-action ratios).

Ratios are always formed in log space. ``ppo_clip_loss`` has a fused Triton forward+backward
(masked reduction and stats in one pass) and an eager torch backend. The sequence-level
objectives of A-LoL and P3O have no Triton path and live in ``lightning_rlhf.losses``.
"""

from __future__ import annotations

import torch

from kernels._backend import check_choice, check_same_shape, resolve_backend
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
    """Eager torch path in fp32; autograd gives the gradient w.r.t. ``logprobs`` only."""
    valid = mask.bool()
    log_ratio = logprobs.float() - old_logprobs.detach().float()  # (B, T) fp32
    if ratio_level == "segment":
        log_ratio = segment_sum(log_ratio, segment_ids, valid)
    log_ratio = torch.where(valid, log_ratio, 0.0)
    ratio = torch.exp(log_ratio)
    adv = torch.where(valid, advantages.detach().float(), 0.0)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    loss = (per_token * _reduction_weights(valid, reduction)).sum()
    stats = _ppo_stats(log_ratio.detach(), ratio.detach(), clipped > unclipped, valid)
    return loss, stats


def _check_ppo(logprobs, old_logprobs, advantages, mask, ratio_level, segment_ids, reduction):
    """Shape and option checks with messages that name the offending argument."""
    others = {"old_logprobs": old_logprobs, "advantages": advantages, "mask": mask}
    check_same_shape("logprobs", logprobs, dims=2, **others)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("ratio_level", ratio_level, RATIO_LEVELS)
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
    """PPO clipped surrogate (losses/README.md §4; MA-PPO's macro variant, §5).

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


# --- Triton: fused forward + backward, one program per (row, block of tokens) -------------------

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch backend works without triton
    triton = None

_N_PARTS = 7  # per program: loss, n_clipped, kl_sum, ratio_sum, ratio_min, ratio_max, n_valid

if triton is not None:

    @triton.jit
    def _ppo_clip_fwd_bwd_kernel(
        lp_ptr, old_ptr, adv_ptr, m_ptr, w_ptr, grad_ptr, part_ptr,
        T, stride_lp, stride_old, stride_adv, stride_m, stride_g,
        clip_low, clip_high,
        BLOCK_T: tl.constexpr, HAS_OLD: tl.constexpr, WRITE_GRAD: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        blk = tl.program_id(1)
        cols = blk * BLOCK_T + tl.arange(0, BLOCK_T)
        inb = cols < T
        valid = (tl.load(m_ptr + row * stride_m + cols, mask=inb, other=0) != 0) & inb
        log_ratio = tl.load(lp_ptr + row * stride_lp + cols, mask=inb, other=0.0).to(tl.float32)
        if HAS_OLD:
            old = tl.load(old_ptr + row * stride_old + cols, mask=inb, other=0.0)
            log_ratio = log_ratio - old.to(tl.float32)
        log_ratio = tl.where(valid, log_ratio, 0.0)
        adv = tl.load(adv_ptr + row * stride_adv + cols, mask=inb, other=0.0).to(tl.float32)
        adv = tl.where(valid, adv, 0.0)
        ratio = tl.exp(log_ratio)
        unclipped = -adv * ratio
        clipped = -adv * tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
        active = (clipped > unclipped) & valid  # the clipped branch wins: no gradient
        weight = tl.load(w_ptr + row)  # this row's weight in the reduction
        per_token = tl.where(valid, tl.where(active, clipped, unclipped), 0.0)
        if WRITE_GRAD:  # d loss / d log_ratio = -A * rho * weight where the unclipped branch wins
            grad = tl.where(valid & ~active, unclipped * weight, 0.0)
            tl.store(grad_ptr + row * stride_g + cols, grad.to(grad_ptr.dtype.element_ty),
                     mask=inb)
        part = part_ptr + (row * tl.num_programs(1) + blk) * 7
        tl.store(part, tl.sum(per_token, axis=0) * weight)
        tl.store(part + 1, tl.sum(active.to(tl.float32), axis=0))
        tl.store(part + 2, tl.sum(tl.where(valid, ratio - 1.0 - log_ratio, 0.0), axis=0))
        tl.store(part + 3, tl.sum(tl.where(valid, ratio, 0.0), axis=0))
        tl.store(part + 4, tl.min(tl.where(valid, ratio, float("inf")), axis=0))
        tl.store(part + 5, tl.max(tl.where(valid, ratio, -float("inf")), axis=0))
        tl.store(part + 6, tl.sum(valid.to(tl.float32), axis=0))


def _row_weights(mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """(B,) fp32 weight of every valid token of each row in the scalar loss."""
    n_row = mask.sum(dim=1, dtype=torch.float32)  # (B,)
    if reduction == "sum":
        return torch.ones_like(n_row)
    if reduction == "token_mean":
        return (1.0 / n_row.sum().clamp(min=1.0)).expand_as(n_row).contiguous()
    return 1.0 / (n_row.clamp(min=1.0) * (n_row > 0).sum().clamp(min=1))


def _launch_ppo(log_ratio_src, old, advantages, mask, weights, grad, clip_low, clip_high):
    """Run the fused kernel; returns the (programs, 7) fp32 partials."""
    B, T = log_ratio_src.shape
    block = min(triton.next_power_of_2(max(T, 1)), 1024)
    grid = (B, triton.cdiv(T, block))
    parts = torch.empty(grid[0] * grid[1], _N_PARTS, dtype=torch.float32,
                        device=log_ratio_src.device)
    _ppo_clip_fwd_bwd_kernel[grid](
        log_ratio_src, old if old is not None else log_ratio_src, advantages, mask, weights,
        grad if grad is not None else log_ratio_src, parts,
        T, log_ratio_src.stride(0), old.stride(0) if old is not None else 0,
        advantages.stride(0), mask.stride(0), grad.stride(0) if grad is not None else 0,
        clip_low, clip_high,
        BLOCK_T=block, HAS_OLD=old is not None, WRITE_GRAD=grad is not None,
        num_warps=4 if block <= 512 else 8,
    )
    return parts


class _PPOClipTriton(torch.autograd.Function):
    """Fused PPO surrogate: the forward writes d loss / d logprobs, the backward scales it."""

    @staticmethod
    def forward(ctx, logprobs, old_logprobs, advantages, mask, segment_ids, clip_low, clip_high,
                ratio_level, reduction):
        lp, old, adv = (x.contiguous() for x in (logprobs, old_logprobs, advantages))
        m = mask.contiguous()
        m = m.view(torch.uint8) if m.dtype == torch.bool else m
        if ratio_level == "segment":  # one log-ratio per macro action, summed in fp32
            lp = segment_sum(lp.float() - old.float(), segment_ids, mask)
            old = None
        want_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(lp) if want_grad else None
        parts = _launch_ppo(lp, old, adv, m, _row_weights(m, reduction), grad, clip_low,
                            clip_high)
        if want_grad and ratio_level == "segment":  # d log_ratio_k / d logprob_t = 1 in macro k
            grad = segment_sum(grad, segment_ids, mask).to(logprobs.dtype)
        ctx.save_for_backward(grad)
        loss, stats = _reduce_parts(parts)
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, g_loss, g_stats):
        (grad,) = ctx.saved_tensors
        if grad is None:
            return (None,) * 9
        grad = grad if bool(g_loss == 1.0) else (grad.float() * g_loss).to(grad.dtype)
        return (grad,) + (None,) * 8


def _reduce_parts(parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(programs, 7) partials -> loss and (5,) clip_frac, approx_kl, ratio_mean, min, max."""
    n = parts[:, 6].sum()
    denom = n.clamp(min=1.0)
    has = n > 0
    zero = parts.new_zeros(())
    return parts[:, 0].sum(), torch.stack([
        parts[:, 1].sum() / denom, parts[:, 2].sum() / denom,
        parts[:, 3].sum() / denom, torch.where(has, parts[:, 4].min(), zero),
        torch.where(has, parts[:, 5].max(), zero),
    ])


def _ppo_clip_loss_triton(logprobs, old_logprobs, advantages, mask, clip_low, clip_high,
                          ratio_level, segment_ids, reduction):
    """Fused Triton path; the stats come back as one (5,) tensor and are unpacked here."""
    loss, stats = _PPOClipTriton.apply(logprobs, old_logprobs, advantages, mask, segment_ids,
                                       clip_low, clip_high, ratio_level, reduction)
    names = ("clip_frac", "approx_kl", "ratio_mean", "ratio_min", "ratio_max")
    out = {name: stats[i] for i, name in enumerate(names)}
    out["approx_kl_k3"] = out["approx_kl"]
    return loss, out
