"""Macro-action GAE (MA-RLHF, Chai et al. ICLR 2025): token rewards/values -> per-token advantages.

Each row's valid tokens are grouped into macro actions (contiguous runs of equal ``segment_ids``);
per macro k: V_k = aggregate of its token values, R_k = sum (or mean) of its token rewards, then
GAE over macro steps (V after the last macro is 0) and A_k, Ret_k broadcast back to its tokens.
With one token per macro this is the textbook token-level GAE. Outputs are fp32.
"""

from __future__ import annotations

import torch

from kernels._backend import check_choice, check_same_shape, resolve_backend

VALUE_AGGS = ("mean", "position", "first")
REWARD_AGGS = ("sum", "mean")


def segment_index(
    segment_ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based macro index of every valid token, counted along the row.

    Args:
        segment_ids: (B, T) int; contiguous runs of equal ids over the valid tokens are macros.
        mask: (B, T) bool/int/float; nonzero = valid token. Padding may be anywhere.
    Returns:
        k: (B, T) int64 macro index (0 at masked positions) and start: (B, T) bool, True at the
        first valid token of each macro.
    """
    valid = mask.bool()
    B, T = valid.shape
    pos = torch.arange(T, device=valid.device).expand(B, T)  # (B, T)
    last_valid = torch.where(valid, pos, -1).cummax(dim=1).values  # (B, T) last valid index <= t
    prev_valid = torch.cat([last_valid.new_full((B, 1), -1), last_valid[:, :-1]], dim=1)  # (B, T)
    ids = segment_ids.long()
    prev_id = ids.gather(1, prev_valid.clamp(min=0))  # (B, T) id of the previous valid token
    start = valid & ((prev_valid < 0) | (ids != prev_id))
    k = torch.where(valid, start.long().cumsum(dim=1) - 1, 0)
    return k, start


def _macro_aggregates(
    rewards: torch.Tensor,
    values: torch.Tensor,
    valid: torch.Tensor,
    k: torch.Tensor,
    start: torch.Tensor,
    n_macro: int,
    value_agg: str,
    reward_agg: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-macro R_k and V_k, both (B, K) fp32, zero for k beyond a row's last macro."""
    B = rewards.shape[0]
    zeros = rewards.new_zeros(B, n_macro)  # (B, K)
    ones = valid.float()
    count = zeros.scatter_add(1, k, ones)  # (B, K) tokens per macro
    safe = count.clamp(min=1.0)
    r_sum = zeros.scatter_add(1, k, torch.where(valid, rewards, 0.0))
    macro_r = r_sum / safe if reward_agg == "mean" else r_sum
    v = torch.where(valid, values, 0.0)
    if value_agg == "mean":
        macro_v = zeros.scatter_add(1, k, v) / safe
    elif value_agg == "first":
        macro_v = zeros.scatter_add(1, k, torch.where(start, v, 0.0))
    else:  # "position": sigma_i ∝ 1 / (i + 1), i = index of the token inside its macro
        before = count.cumsum(dim=1) - count  # (B, K) valid tokens before macro k
        i = ones.cumsum(dim=1) - 1.0 - before.gather(1, k)  # (B, T)
        w = torch.where(valid, 1.0 / (i + 1.0), 0.0)
        macro_v = zeros.scatter_add(1, k, v * w) / zeros.scatter_add(1, k, w).clamp(min=1e-30)
    return macro_r, macro_v


def _reverse_gae(
    macro_r: torch.Tensor, macro_v: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """A_k = delta_k + gamma*lam*A_{k+1}, delta_k = R_k + gamma*V_{k+1} - V_k over (B, K)."""
    r_t, v_t = macro_r.t().contiguous(), macro_v.t().contiguous()  # (K, B)
    adv = torch.empty_like(r_t)  # (K, B)
    last = torch.zeros_like(r_t[0])  # (B,)
    next_v = torch.zeros_like(r_t[0])
    for step in range(r_t.shape[0] - 1, -1, -1):
        delta = r_t[step] + gamma * next_v - v_t[step]
        last = delta + gamma * lam * last
        adv[step] = last
        next_v = v_t[step]
    return adv.t()  # (B, K)


def _macro_gae_torch(rewards, values, mask, segment_ids, gamma, lam, value_agg, reward_agg):
    """Vectorised torch path: scatter_add aggregates, a loop over K macro steps batched over B."""
    valid = mask.bool()
    rewards, values = rewards.float(), values.float()
    k, start = segment_index(segment_ids, valid)
    n_macro = int(start.sum(dim=1).max().item()) if valid.numel() else 0
    if n_macro == 0:
        return torch.zeros_like(rewards), torch.zeros_like(rewards)
    macro_r, macro_v = _macro_aggregates(
        rewards, values, valid, k, start, n_macro, value_agg, reward_agg
    )
    macro_a = _reverse_gae(macro_r, macro_v, gamma, lam)  # (B, K)
    adv = torch.where(valid, macro_a.gather(1, k), 0.0)  # (B, T)
    ret = torch.where(valid, (macro_a + macro_v).gather(1, k), 0.0)  # (B, T)
    return adv, ret


def _check(rewards, values, mask, segment_ids, value_agg, reward_agg) -> None:
    """Shape and option checks with messages that name the offending argument."""
    check_same_shape("rewards", rewards, dims=2, values=values, mask=mask, segment_ids=segment_ids)
    check_choice("value_agg", value_agg, VALUE_AGGS)
    check_choice("reward_agg", reward_agg, REWARD_AGGS)


@torch.no_grad()
def macro_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    segment_ids: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    value_agg: str = "mean",
    reward_agg: str = "sum",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over macro actions, broadcast back to tokens (losses/README.md §4 and §5).

    Args:
        rewards: (B, T) per-token rewards (any float dtype; summed in fp32).
        values: (B, T) per-token value estimates.
        mask: (B, T) nonzero at valid response tokens; left or right padding, variable lengths.
        segment_ids: (B, T) int; the macro action of each valid token (contiguous runs).
        gamma, lam: discount and GAE lambda over macro steps.
        value_agg: V_k = "mean" of token values | "position" (weights ∝ 1/(i+1)) | "first".
        reward_agg: R_k = "sum" (paper) | "mean" (released code) of token rewards.
        backend: "auto" | "triton" | "torch".
    Returns:
        advantages (B, T) and returns (B, T), fp32, 0 where mask == 0, no grad.
    """
    _check(rewards, values, mask, segment_ids, value_agg, reward_agg)
    args = (rewards, values, mask, segment_ids, float(gamma), float(lam), value_agg, reward_agg)
    if resolve_backend(backend, rewards, values, mask, segment_ids) == "triton":
        return _macro_gae_triton(*args)
    return _macro_gae_torch(*args)


# --- Triton: one program per row -------------------------------------------------------------

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch backend works without triton
    triton = None

_VALUE_AGG_CODE = {"mean": 0, "position": 1, "first": 2}

if triton is not None:

    @triton.jit
    def _max_combine(a, b):
        return tl.maximum(a, b)

    @triton.jit
    def _min_combine(a, b):
        return tl.minimum(a, b)

    @triton.jit
    def _seg_count_combine(f1, c1, f2, c2):
        # forward segmented sum; (f1, c1) is the earlier range, f = "a macro starts in the range"
        return f1 | f2, tl.where(f2 != 0, c2, c1 + c2)

    @triton.jit
    def _seg_sum_combine(f1, r1, n1, d1, f2, r2, n2, d2):
        keep = f2 != 0
        return (f1 | f2, tl.where(keep, r2, r1 + r2), tl.where(keep, n2, n1 + n2),
                tl.where(keep, d2, d1 + d2))

    @triton.jit
    def _affine_rev_combine(a1, b1, a2, b2):
        # reverse scan of x_t = a_t * x_{t+1} + b_t; (a1, b1) is the later range, (a2, b2) the
        # earlier one (triton hands the accumulated later part first when reverse=True)
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _macro_gae_fwd_kernel(
        r_ptr, v_ptr, m_ptr, s_ptr, adv_ptr, ret_ptr,
        T, stride_r, stride_v, stride_m, stride_s, stride_o,
        gamma, gamma_lam,
        BLOCK_T: tl.constexpr, VALUE_AGG: tl.constexpr, REWARD_MEAN: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        t = tl.arange(0, BLOCK_T)
        inb = t < T
        valid = tl.load(m_ptr + row * stride_m + t, mask=inb, other=0) != 0
        r = tl.load(r_ptr + row * stride_r + t, mask=inb, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + row * stride_v + t, mask=inb, other=0.0).to(tl.float32)
        sid = tl.load(s_ptr + row * stride_s + t, mask=inb, other=0)
        r = tl.where(valid, r, 0.0)
        v = tl.where(valid, v, 0.0)
        # macro starts: a valid token whose previous valid token has another id (or none)
        last_valid = tl.associative_scan(tl.where(valid, t, -1), 0, _max_combine)
        prev_valid = tl.where(t > 0, tl.gather(last_valid, tl.maximum(t - 1, 0), 0), -1)
        prev_id = tl.gather(sid, tl.maximum(prev_valid, 0), 0)
        start = (valid & ((prev_valid < 0) | (sid != prev_id))).to(tl.int32)
        # macro ends: a valid token whose next valid token starts a macro (or there is none)
        first_valid = tl.associative_scan(tl.where(valid, t, BLOCK_T), 0, _min_combine,
                                          reverse=True)  # nearest valid index >= t
        nxt = tl.where(t + 1 < BLOCK_T, tl.gather(first_valid, tl.minimum(t + 1, BLOCK_T - 1), 0),
                       BLOCK_T)  # next valid index > t
        nxt_c = tl.minimum(nxt, BLOCK_T - 1)
        end = valid & ((nxt >= BLOCK_T) | (tl.gather(start, nxt_c, 0) != 0))
        # segmented sums over each macro, complete at its end token
        _, cnt = tl.associative_scan((start, valid.to(tl.float32)), 0, _seg_count_combine)
        if VALUE_AGG == 0:
            w = valid.to(tl.float32)
        elif VALUE_AGG == 1:
            w = tl.where(valid, 1.0 / tl.maximum(cnt, 1.0), 0.0)  # sigma_i ∝ 1/(i+1)
        else:
            w = start.to(tl.float32)
        _, r_sum, num, den = tl.associative_scan((start, r, v * w, w), 0, _seg_sum_combine)
        if REWARD_MEAN:
            r_sum = r_sum / tl.maximum(cnt, 1.0)
        v_end = tl.where(end, num / tl.where(end, den, 1.0), 0.0)  # V_k at macro k's end token
        end_of = tl.associative_scan(tl.where(end, t, BLOCK_T), 0, _min_combine, reverse=True)
        v_own = tl.gather(v_end, tl.minimum(end_of, BLOCK_T - 1), 0)  # V_k at every token of k
        v_next = tl.where(nxt < BLOCK_T, tl.gather(v_own, nxt_c, 0), 0.0)  # V_{k+1} (0 at the end)
        delta = r_sum + gamma * v_next - v_end
        a = tl.where(end, gamma_lam, 1.0)
        b = tl.where(end, delta, 0.0)
        _, adv = tl.associative_scan((a, b), 0, _affine_rev_combine, reverse=True)
        tl.store(adv_ptr + row * stride_o + t, tl.where(valid, adv, 0.0), mask=inb)
        tl.store(ret_ptr + row * stride_o + t, tl.where(valid, adv + v_own, 0.0), mask=inb)


def _macro_gae_triton(rewards, values, mask, segment_ids, gamma, lam, value_agg, reward_agg):
    """Launch one program per row over a power-of-two block covering all T tokens."""
    B, T = rewards.shape
    adv = torch.zeros((B, T), dtype=torch.float32, device=rewards.device)
    ret = torch.zeros_like(adv)
    if B == 0 or T == 0:
        return adv, ret
    rewards, values, segment_ids = (x.contiguous() for x in (rewards, values, segment_ids))
    mask = mask.contiguous()
    mask = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
    block = triton.next_power_of_2(T)
    _macro_gae_fwd_kernel[(B,)](
        rewards, values, mask, segment_ids, adv, ret,
        T, rewards.stride(0), values.stride(0), mask.stride(0), segment_ids.stride(0), T,
        gamma, gamma * lam,
        BLOCK_T=block, VALUE_AGG=_VALUE_AGG_CODE[value_agg],
        REWARD_MEAN=reward_agg == "mean", num_warps=4 if block <= 1024 else 8,
    )
    return adv, ret
