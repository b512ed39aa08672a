"""Critic-free policy gradients beside P3O (losses/README.md §7): RLOO, ReMax, GRPO.

RLOO: Ahmadian et al. 2024, "Back to Basics" (leave-one-out baseline, REINFORCE on whole
sequences). ReMax: Li et al. 2023 (baseline = reward of the greedy response). GRPO: Shao et al.
2024, DeepSeekMath (group-normalised advantage, token-level clipped surrogate, k3 KL penalty).
"""

from __future__ import annotations

import torch

import kernels
from lightning_rlhf.losses.kl import kl_penalty


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantage A_i = R_i - mean_{j != i} R_j within each group of K samples.

    Args:
        rewards: (B, K) rewards of K >= 2 samples per prompt.
    Returns:
        (B, K) fp32; equals K / (K - 1) * (R_i - mean_j R_j).
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rloo_advantages: rewards must be (B, K) with K >= 2, got "
                         f"{tuple(rewards.shape)}")  # fmt: skip
    r = rewards.detach().float()
    k = r.shape[1]
    others_mean = (r.sum(dim=1, keepdim=True) - r) / (k - 1)  # (B, K)
    return r - others_mean


def remax_advantages(rewards: torch.Tensor, greedy_rewards: torch.Tensor) -> torch.Tensor:
    """ReMax advantage: the sampled response's reward minus the greedy response's.

    Args:
        rewards: (B,) rewards of sampled responses; greedy_rewards: (B,) of greedy ones.
    Returns:
        (B,) fp32.
    """
    if rewards.shape != greedy_rewards.shape or rewards.dim() != 1:
        raise ValueError(f"remax_advantages: rewards and greedy_rewards must both be (B,), got "
                         f"{tuple(rewards.shape)} and {tuple(greedy_rewards.shape)}")  # fmt: skip
    return rewards.detach().float() - greedy_rewards.detach().float()


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6, scale: bool = True) -> torch.Tensor:
    """GRPO's group-normalised advantage (r_i - mean) / (std + eps) over each group of K.

    ``std`` is the unbiased (K - 1) sample standard deviation, as ``torch.std`` in the
    released TRL implementation. ``scale=False`` only subtracts the mean (Dr. GRPO).

    Args:
        rewards: (B, K) rewards of K >= 2 samples per prompt.
    Returns:
        (B, K) fp32; a group with equal rewards gets zeros.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"grpo_advantages: rewards must be (B, K) with K >= 2, got "
                         f"{tuple(rewards.shape)}")  # fmt: skip
    r = rewards.detach().float()
    centred = r - r.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (r.std(dim=1, keepdim=True) + eps)


def reinforce_loss(
    logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE with a baseline on whole sequences: mean_b -A_b * l_theta(y_b | x_b).

    Args:
        logprobs: (B, T) log pi_theta(y_t) (with grad); mask: (B, T).
        advantages: (B,) detached sequence advantages (RLOO, ReMax, ...).
    Returns:
        fp32 loss; detached stats: ``loss``, ``advantage_mean``, ``advantage_std``,
        ``seq_logprob_mean`` (mean of l_theta).
    """
    if advantages.shape != (logprobs.shape[0],) or mask.shape != logprobs.shape:
        raise ValueError(f"reinforce_loss: need logprobs/mask (B, T) and advantages (B,), got "
                         f"{tuple(logprobs.shape)}, {tuple(mask.shape)}, "
                         f"{tuple(advantages.shape)}")  # fmt: skip
    seq_logprobs = torch.where(mask.bool(), logprobs.float(), 0.0).sum(dim=1)  # (B,)
    adv = advantages.detach().float()
    loss = -(adv * seq_logprobs).mean()
    stats = {
        "loss": loss.detach(),
        "advantage_mean": adv.mean(),
        "advantage_std": adv.std(unbiased=False),
        "seq_logprob_mean": seq_logprobs.detach().mean(),
    }
    return loss, stats


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    reduction: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO: token-level clipped surrogate with the sequence advantage on every token, plus
    beta * k3 KL to the reference (pi_ref/pi - log(pi_ref/pi) - 1), both reduced alike.

    The paper averages each sequence's tokens, then the sequences ("seq_mean"); the default
    here is the token mean over the batch (as DAPO and recent TRL), ``reduction`` picks.

    Args:
        logprobs: (B, T) log pi_theta (with grad); old_logprobs: (B, T) log pi_old;
        ref_logprobs: (B, T) log pi_ref; advantages: (B,) e.g. :func:`grpo_advantages`
            flattened; mask: (B, T).
        clip_eps: PPO clip range; beta: KL coefficient.
        reduction: "token_mean" | "seq_mean" (see ``kernels.ppo_clip_loss``).
    Returns:
        fp32 loss; detached stats: ``loss``, ``policy_loss``, ``kl`` (mean k3), and the clip
        stats of ``kernels.ppo_clip_loss`` (clip_frac, approx_kl, ratio_mean, ...).
    """
    if advantages.shape != (logprobs.shape[0],):
        raise ValueError(f"grpo_loss: advantages must be (B,) = ({logprobs.shape[0]},), got "
                         f"{tuple(advantages.shape)}")  # fmt: skip
    token_adv = advantages.detach().float()[:, None].expand_as(logprobs)  # (B, T)
    policy, stats = kernels.ppo_clip_loss(
        logprobs, old_logprobs, token_adv.contiguous(), mask,
        clip_low=clip_eps, clip_high=clip_eps, reduction=reduction,
    )  # fmt: skip
    k3 = kl_penalty(logprobs, ref_logprobs.detach(), mask, "k3")  # (B, T)
    kl = _reduce(k3, mask, reduction)
    loss = policy + beta * kl
    stats = {"loss": loss.detach(), "policy_loss": policy.detach(), "kl": kl.detach(), **stats}
    return loss, stats


def _reduce(x: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """Token mean over the batch or mean over rows of each row's token mean, of a (B, T) x."""
    m = mask.float()
    if reduction == "token_mean":
        return (x * m).sum() / m.sum().clamp(min=1.0)
    if reduction == "seq_mean":
        per_row = m.sum(dim=1)  # (B,)
        rows = (per_row > 0).sum().clamp(min=1)
        return ((x * m).sum(dim=1) / per_row.clamp(min=1.0)).sum() / rows
    raise ValueError(f"grpo_loss: reduction must be 'token_mean' or 'seq_mean', got {reduction!r}")
