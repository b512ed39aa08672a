"""Masked reductions over token positions, the one owner of "sum / mean over the valid tokens"
(argument checks come from ``kernels``' ``check_same_shape``)."""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sum of ``x`` over the nonzero entries of ``mask`` along ``dim``; e.g. (N, T) token
    log-probs -> (N,) sequence log-likelihoods l(y|x). Masked entries may hold anything (-inf,
    NaN): they are replaced, not multiplied."""
    return torch.where(mask.bool(), x, 0.0).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the nonzero entries of ``mask`` (over everything when ``dim`` is None,
    else along ``dim``); 0 where there are none."""
    valid = mask.bool()
    if dim is None:
        return torch.where(valid, x, 0.0).sum() / valid.sum().clamp(min=1)
    return torch.where(valid, x, 0.0).sum(dim) / valid.sum(dim).clamp(min=1)
