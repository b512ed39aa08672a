"""fp32 PyTorch references of every op in ``kernels``: simple, obviously right, slow.

Tests and benchmarks compare the Triton kernels and the torch backends against these. This module
never imports triton.
"""

from __future__ import annotations

import torch

# --- log-probs (sequence_logprobs, linear_logprobs) ------------------------------------------


def sequence_logprobs_ref(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    logit_scale: float | None = None,
    softcap: float | None = None,
    ignore_index: int = -100,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """fp32 reference: ``log_softmax(softcap(logit_scale * logits) / temperature)[targets]``.

    ``softcap(y) = c * tanh(y / c)``; None skips a transform. logits (B, T, V) or (N, V); targets
    (B, T) or (N,). Returns fp32 log-probs shaped like ``targets`` (0 where ignored) and, with
    ``return_entropy``, the entropy ``-sum p log p`` of that distribution (0 if ignored).
    Materialises the whole fp32 log-softmax; differentiable through plain torch.
    """
    z = logits.float()  # (B, T, V)
    if logit_scale is not None:
        z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    logp_all = torch.log_softmax(z / temperature, dim=-1)  # (B, T, V) fp32
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0).long()
    logp = logp_all.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T)
    logp = torch.where(valid, logp, 0.0)
    if not return_entropy:
        return logp
    ent = -(logp_all.exp() * logp_all).nan_to_num(nan=0.0).sum(-1)  # (B, T)
    return logp, torch.where(valid, ent, 0.0)


def linear_logprobs_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    logit_scale: float | None = None,
    softcap: float | None = None,
    ignore_index: int = -100,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """fp32 reference of ``sequence_logprobs(hidden @ weight.T + bias, targets, ...)``.

    hidden (B, T, H) or (N, H); weight (V, H); bias (V,) or None; targets (B, T) or (N,).
    Materialises the full fp32 (B, T, V) logits.
    """
    logits = hidden.float() @ weight.float().t()  # (B, T, V)
    if bias is not None:
        logits = logits + bias.float()
    return sequence_logprobs_ref(
        logits, targets, temperature=temperature, logit_scale=logit_scale, softcap=softcap,
        ignore_index=ignore_index, return_entropy=return_entropy,
    )


# --- ratio losses (ppo_clip_loss, A-LoL weights, P3O) and macro-action GAE ------------------


def _row_segments(segment_ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Positions of each macro action in one row: runs of equal ids over the valid tokens."""
    segments: list[list[int]] = []
    last = None
    for t in range(segment_ids.shape[0]):
        if not bool(mask[t]):
            continue
        sid = int(segment_ids[t])
        if not segments or sid != last:
            segments.append([])
        segments[-1].append(t)
        last = sid
    return segments


def _macro_value(v: torch.Tensor, value_agg: str) -> torch.Tensor:
    """Aggregate the (n,) fp32 token values of one macro action."""
    if value_agg == "first":
        return v[0]
    if value_agg == "position":
        w = 1.0 / torch.arange(1, v.shape[0] + 1, dtype=torch.float32)  # sigma_i ∝ 1/(i+1)
        return (v * w).sum() / w.sum()
    return v.mean()


def macro_gae_ref(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    segment_ids: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    value_agg: str = "mean",
    reward_agg: str = "sum",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Macro-action GAE by Python loops over rows and macros: (B, T) in, (B, T) fp32 out."""
    r, v = rewards.float().cpu(), values.float().cpu()
    adv, ret = torch.zeros_like(r), torch.zeros_like(r)
    for b in range(r.shape[0]):
        segs = _row_segments(segment_ids[b].cpu(), mask[b].cpu())
        macro_r = [r[b, s].sum() / (len(s) if reward_agg == "mean" else 1) for s in segs]
        macro_v = [_macro_value(v[b, s], value_agg) for s in segs]
        a_next, v_next = torch.tensor(0.0), torch.tensor(0.0)
        for k in reversed(range(len(segs))):
            a_next = macro_r[k] + gamma * v_next - macro_v[k] + gamma * lam * a_next
            v_next = macro_v[k]
            adv[b, segs[k]] = a_next
            ret[b, segs[k]] = a_next + macro_v[k]
    return adv.to(rewards.device), ret.to(rewards.device)


def ppo_clip_loss_ref(
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate in fp32, macro ratios by a loop over rows. (B, T) in, scalar out."""
    m = mask.bool()
    log_ratio = torch.where(m, logprobs.float() - old_logprobs.float(), 0.0)  # (B, T)
    if ratio_level == "segment":
        rows = []
        for b in range(m.shape[0]):
            row = torch.zeros_like(log_ratio[b])
            for s in _row_segments(segment_ids[b], m[b]):
                row = row.index_add(0, torch.tensor(s), log_ratio[b, s].sum().expand(len(s)))
            rows.append(row)
        log_ratio = torch.stack(rows)  # (B, T)
    ratio = log_ratio.exp()
    adv = torch.where(m, advantages.float(), 0.0)
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.max(-adv * ratio, clipped) * m  # (B, T)
    n_row = m.sum(dim=1)  # (B,)
    if reduction == "sum":
        loss = per_token.sum()
    elif reduction == "token_mean":
        loss = per_token.sum() / max(int(n_row.sum()), 1)
    else:
        has = n_row > 0
        row_means = per_token.sum(dim=1)[has] / n_row[has]
        loss = row_means.mean() if bool(has.any()) else per_token.sum() * 0.0
    lr, rt, n = log_ratio.detach()[m], ratio.detach()[m], max(int(m.sum()), 1)
    stats = {
        "clip_frac": (clipped.detach() > (-adv * ratio).detach())[m].float().sum() / n,
        "approx_kl": (rt - 1.0 - lr).sum() / n,
        "ratio_mean": rt.sum() / n,
        "ratio_min": rt.min() if rt.numel() else torch.tensor(0.0),
        "ratio_max": rt.max() if rt.numel() else torch.tensor(0.0),
    }
    return loss, stats


def gae_reverse_loop_ref(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Textbook token-level GAE, the reverse loop big frameworks run over batched (B,) slices.

    Rewards and values are zeroed at masked tokens, so a contiguous valid span may be padded on
    either side. (B, T) in, advantages and returns (B, T) fp32 out (0 at masked tokens).
    """
    m = mask.bool()
    r = torch.where(m, rewards.float(), 0.0)
    v = torch.where(m, values.float(), 0.0)
    T = r.shape[1]
    last = torch.zeros_like(r[:, 0])  # (B,)
    adv = []
    for t in reversed(range(T)):
        next_v = v[:, t + 1] if t < T - 1 else torch.zeros_like(last)
        delta = r[:, t] + gamma * next_v - v[:, t]
        last = delta + gamma * lam * last
        adv.append(last)
    adv = torch.stack(adv[::-1], dim=1)  # (B, T)
    return torch.where(m, adv, 0.0), torch.where(m, adv + v, 0.0)
