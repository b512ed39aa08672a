"""Literal, row-by-row references of the sequence-level objectives that have no kernel (A-LoL's
clamped importance weight, P3O V1/V2), for the loss tests."""

from __future__ import annotations

import torch


def clamped_importance_weight_ref(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.9,
    level: str = "sequence",
) -> torch.Tensor:
    """A-LoL clamped weights, row by row: (B,) for "sequence", (B, T) for "token" (fp32)."""
    rows = []
    for b in range(logprobs.shape[0]):
        keep = mask[b].bool()
        log_ratio = logprobs[b, keep].detach().float() - ref_logprobs[b, keep].float()
        if level == "sequence":
            rows.append(torch.exp(log_ratio.sum()).clamp(1.0 - clip_eps, 1.0 + clip_eps))
        else:
            row = torch.zeros(logprobs.shape[1])
            row[keep] = torch.exp(log_ratio).clamp(1.0 - clip_eps, 1.0 + clip_eps)
            rows.append(row)
    return torch.stack(rows)


def _clipped_term(sign_delta: torch.Tensor, rho: torch.Tensor, lo, hi) -> torch.Tensor:
    """max(-sign_delta * rho, -sign_delta * clip(rho, lo, hi)) for one scalar pair term."""
    return torch.max(torch.stack([-sign_delta * rho, -sign_delta * rho.clamp(lo, hi)]))


def p3o_clip_objective_ref(
    logps1, old_logps1, ref_logps1, logps2, old_logps2, ref_logps2, rewards1, rewards2,
    *, variant: str = "v1", clip_eps: float = 0.2, kl_beta: float = 0.05,
    weight_cap: float = 10.0,
) -> torch.Tensor:
    """P3O V1/V2 loss, pair by pair, literally as losses/README.md §6 writes it.
    (B,) in, scalar out."""
    losses = []
    for b in range(logps1.shape[0]):
        l1, l2 = logps1[b].float(), logps2[b].float()
        o1, o2 = old_logps1[b].float(), old_logps2[b].float()
        r1 = rewards1[b] - kl_beta * (l1 - ref_logps1[b])
        r2 = rewards2[b] - kl_beta * (l2 - ref_logps2[b])
        delta = (r1 - r2).detach()
        rho1, rho2 = torch.exp(l1 - o1), torch.exp(l2 - o2)
        if variant == "v1":
            bar1 = rho1.detach().clamp(1.0 / weight_cap, weight_cap)
            bar2 = rho2.detach().clamp(1.0 / weight_cap, weight_cap)
            lo, hi = 1.0 - clip_eps, 1.0 + clip_eps
            losses.append(0.5 * (_clipped_term(delta * bar2, rho1, lo, hi)
                                 + _clipped_term(-delta * bar1, rho2, lo, hi)))
        else:
            w = (rho1 * rho2).detach().clamp(1.0 / weight_cap, weight_cap)
            u_old = o1 - o2
            losses.append(_clipped_term(delta * w, l1 - l2, u_old - clip_eps, u_old + clip_eps))
    return torch.stack(losses).mean()
