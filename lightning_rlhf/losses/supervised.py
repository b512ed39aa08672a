"""Supervised objectives: token-mean NLL (SFT) and the Bradley–Terry loss (reward model)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sft_loss(
    logprobs: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-mean negative log-likelihood over the whole batch.

    Args:
        logprobs: (B, T) log pi(y_t) (0 where masked).
        mask: (B, T) 1 on scored tokens.
    Returns:
        loss = -sum(m * logprobs) / max(sum(m), 1); stats: ``loss``, ``ppl`` (exp of the loss),
        ``tokens`` (number of scored tokens).
    """
    tokens = mask.sum().to(logprobs.dtype)
    masked = torch.where(mask.bool(), logprobs, torch.zeros_like(logprobs))  # -inf pads stay out
    loss = -masked.sum() / tokens.clamp(min=1)
    stats = {"loss": loss.detach(), "ppl": loss.detach().exp(), "tokens": tokens.detach()}
    return loss, stats


def bradley_terry_loss(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-log sigmoid(r(x, y_w) - r(x, y_l)), mean over pairs (Bradley & Terry 1952; Ouyang 2022).

    Args:
        chosen_scores: (B,) scores of the preferred responses.
        rejected_scores: (B,) scores of the dispreferred responses.
    Returns:
        loss; stats: ``loss``, ``accuracy`` (fraction with chosen > rejected), ``margin`` (mean
        score difference), ``chosen_score`` and ``rejected_score`` (means).
    """
    margin = chosen_scores - rejected_scores
    loss = -F.logsigmoid(margin).mean()
    stats = {
        "loss": loss.detach(),
        "accuracy": (margin > 0).float().mean().detach(),
        "margin": margin.mean().detach(),
        "chosen_score": chosen_scores.mean().detach(),
        "rejected_score": rejected_scores.mean().detach(),
    }
    return loss, stats
