"""Per-token estimators of KL(pi || pi_ref) at the sampled tokens (Schulman, "Approximating KL
divergence", 2020): k1, k2, k3, and the sequence KL they sum to; used in rewards (PPO, RLOO,
ReMax, P3O) and in losses (GRPO's k3 term)."""

from __future__ import annotations

from typing import Literal

import torch

from kernels import check_same_shape

KLKind = Literal["k1", "k2", "k3"]


def kl_penalty(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kind: KLKind = "k1",
) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) at the sampled tokens, 0 outside ``mask``.

    With ``d = log pi - log pi_ref``: k1 = d; k2 = d^2 / 2; k3 = exp(-d) + d - 1
    (= pi_ref/pi - log(pi_ref/pi) - 1, GRPO's penalty; always >= 0). Differentiable.

    Args:
        logprobs: (B, T) log pi(y_t); ref_logprobs: (B, T) log pi_ref(y_t); mask: (B, T).
        kind: "k1" | "k2" | "k3".
    Returns:
        (B, T) fp32.
    """
    check_same_shape("logprobs", logprobs, dims=2, ref_logprobs=ref_logprobs, mask=mask)
    valid = mask.bool()
    d = torch.where(valid, logprobs.float() - ref_logprobs.float(), 0.0)  # no NaN grads from pads
    if kind == "k1":
        kl = d
    elif kind == "k2":
        kl = 0.5 * d.square()
    elif kind == "k3":
        kl = torch.expm1(-d) + d
    else:
        raise ValueError(f"kl_penalty: kind must be 'k1', 'k2' or 'k3', got {kind!r}")
    return torch.where(valid, kl, 0.0)


def sequence_kl(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Sequence KL estimate l(y) - l_ref(y): the masked sum of k1 over each row.

    Args:
        logprobs, ref_logprobs, mask: (B, T).
    Returns:
        (B,) fp32.
    """
    return kl_penalty(logprobs, ref_logprobs, mask, "k1").sum(dim=1)
