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
    ignore_index: int = -100,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """fp32 reference: ``log_softmax(logits / temperature)[targets]``, 0 where ignored.

    logits (B, T, V) or (N, V); targets (B, T) or (N,). Returns fp32 log-probs shaped like
    ``targets`` and, with ``return_entropy``, the tempered entropy ``-sum p log p`` (0 if ignored).
    Materialises the whole fp32 log-softmax; differentiable through plain torch.
    """
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V) fp32
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
        logits, targets, temperature=temperature, ignore_index=ignore_index,
        return_entropy=return_entropy,
    )


# --- ratio losses (ppo_clip_loss, A-LoL weights, P3O) and macro-action GAE ------------------
