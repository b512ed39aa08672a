"""Critic-free policy gradients beside P3O (losses/README.md §7): RLOO, ReMax, GRPO.

RLOO: Ahmadian et al. 2024, "Back to Basics" (leave-one-out baseline, REINFORCE on whole
sequences). ReMax: Li et al. 2023 (baseline = reward of the greedy response). GRPO: Shao et al.
2024, DeepSeekMath (group-normalised advantage, token-level clipped surrogate, k3 KL penalty)
with the options of its successors: Dr. GRPO (Liu et al. 2025, constant normaliser, no std),
DAPO (Yu et al. 2025, clip-higher, token mean over the accumulated batch, dynamic sampling,
truncation masking), GSPO (Zheng et al. 2025, sequence ratios) and an entropy bonus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import kernels
from lightning_rlhf.losses.kl import kl_penalty
from lightning_rlhf.losses.masked import masked_mean


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


def _std_none(rewards: torch.Tensor, eps: float) -> torch.Tensor | None:
    """No scaling (Dr. GRPO, TRL scale_rewards="none")."""
    return None


def _std_group(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """(G, 1) std of each group + eps (the paper; TRL scale_rewards="group")."""
    return rewards.std(dim=1, keepdim=True) + eps


def _std_batch(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """() std of all the batch's rewards + eps (TRL scale_rewards="batch")."""
    return rewards.std() + eps


REWARD_SCALES = {"group": _std_group, "batch": _std_batch, "none": _std_none}


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6, scale: str = "group") -> torch.Tensor:
    """GRPO's advantage (r_i - mean_group) / (std + eps) over groups of K.

    ``scale`` picks the std: "group" (each group's, the paper), "batch" (of all G * K rewards,
    TRL's "batch"), "none" (only the mean is subtracted: Dr. GRPO). Stds are unbiased (K - 1),
    as ``torch.std`` in TRL; "batch" uses this rank's rewards only.

    Args:
        rewards: (B, K) rewards of K >= 2 samples per prompt.
        eps: added to the std (TRL's default is 1e-4).
    Returns:
        (B, K) fp32; a group with equal rewards gets zeros.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"grpo_advantages: rewards must be (B, K) with K >= 2, got "
                         f"{tuple(rewards.shape)}")  # fmt: skip
    if scale not in REWARD_SCALES:
        raise ValueError(f"grpo_advantages: scale must be one of {list(REWARD_SCALES)}, got "
                         f"{scale!r}")  # fmt: skip
    r = rewards.detach().float()
    centred = r - r.mean(dim=1, keepdim=True)
    std = REWARD_SCALES[scale](r, eps)
    return centred if std is None else centred / std


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


# --- GRPO loss: aggregation, ratios, clipping ---------------------------------------------------


def _token_mean(x: torch.Tensor, mask: torch.Tensor, max_tokens: int | None) -> torch.Tensor:
    """sum of valid x / number of valid tokens (TRL "bnpo"; DAPO within one minibatch)."""
    return masked_mean(x, mask)


def _seq_mean(x: torch.Tensor, mask: torch.Tensor, max_tokens: int | None) -> torch.Tensor:
    """Mean over rows with a valid token of each row's token mean (the paper; TRL "grpo")."""
    m = mask.float()
    per_row = m.sum(dim=1)  # (B,)
    rows = (per_row > 0).sum().clamp(min=1)
    return ((x * m).sum(dim=1) / per_row.clamp(min=1.0)).sum() / rows


def _constant(x: torch.Tensor, mask: torch.Tensor, max_tokens: int | None) -> torch.Tensor:
    """sum of valid x / (B * max_tokens), a constant normaliser (Dr. GRPO; TRL "dr_grpo")."""
    return (x * mask.float()).sum() / _constant_divisor(mask, max_tokens)


def _constant_divisor(mask: torch.Tensor, max_tokens: int | None) -> float:
    """B * max_tokens, the Dr. GRPO normaliser of a (B, T) minibatch."""
    return float(mask.shape[0] * max_tokens)


@dataclass(frozen=True)
class Aggregation:
    """How per-token losses become one scalar.

    Attributes:
        reduce: (x (B, T), mask (B, T), max_tokens) -> scalar.
        kernel_reduction: the ``kernels.ppo_clip_loss`` reduction that computes ``reduce`` of the
            surrogate, after division by ``kernel_divisor(mask, max_tokens)`` when given.
        by_tokens: under gradient accumulation, weight each minibatch by its share of the valid
            tokens (not of the rows), so the step is the token mean of the accumulated batch.
    """

    reduce: Callable[[torch.Tensor, torch.Tensor, int | None], torch.Tensor]
    kernel_reduction: str
    kernel_divisor: Callable[[torch.Tensor, int | None], float] | None = None
    by_tokens: bool = False


AGGREGATIONS: dict[str, Aggregation] = {
    "token_mean": Aggregation(_token_mean, "token_mean"),
    "seq_mean": Aggregation(_seq_mean, "seq_mean"),
    "constant": Aggregation(_constant, "sum", _constant_divisor),
    "global_token_mean": Aggregation(_token_mean, "token_mean", by_tokens=True),
}


def _token_log_ratio(logprobs, old_logprobs, mask) -> torch.Tensor:
    """log pi_theta(y_t) - log pi_old(y_t): (B, T), 0 at masked tokens."""
    return torch.where(mask.bool(), logprobs.float() - old_logprobs.detach().float(), 0.0)


def _sequence_log_ratio(logprobs, old_logprobs, mask) -> torch.Tensor:
    """GSPO (Zheng et al. 2025): the length-normalised sequence ratio
    log s_i = (1 / |y_i|) sum_t (log pi_theta - log pi_old), on every valid token: (B, T)."""
    m = mask.bool()
    token = _token_log_ratio(logprobs, old_logprobs, mask)
    per_row = token.sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    return torch.where(m, per_row.expand_as(token), 0.0)


LOG_RATIOS = {"token": _token_log_ratio, "sequence": _sequence_log_ratio}


def clipped_surrogate(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    delta: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO surrogate max(-A min(rho, delta), -A clip(rho, 1 - clip_low, 1 + clip_high)).

    ``delta`` caps the unclipped ratio from above (two-sided clipping, TRL's ``delta``): for
    A < 0 the loss stops growing at rho = delta. The eager path of ``kernels.ppo_clip_loss``
    with a cap and any log-ratio (sequence-level ones for GSPO).

    Args:
        log_ratio: (B, T) log rho (with grad), 0 at masked tokens; advantages: (B, T) detached;
        mask: (B, T).
    Returns:
        (B, T) fp32 per-token loss (0 at masked tokens) and the stats of ``ppo_clip_loss``:
        clip_frac (clipped branch or cap active), approx_kl (k3), ratio_mean/min/max.
    """
    valid = mask.bool()
    ratio = log_ratio.exp()
    adv = torch.where(valid, advantages.detach().float(), 0.0)
    unclipped = -adv * (ratio if delta is None else ratio.clamp(max=delta))
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.where(valid, torch.maximum(unclipped, clipped), 0.0)
    active = (clipped > -adv * ratio) | (unclipped != -adv * ratio)
    n = valid.sum().clamp(min=1)
    r, lr = ratio.detach(), log_ratio.detach()
    stats = {
        "clip_frac": (active & valid).sum() / n,
        "approx_kl": torch.where(valid, r - 1.0 - lr, 0.0).sum() / n,
        "ratio_mean": torch.where(valid, r, 0.0).sum() / n,
        "ratio_min": r[valid].min() if valid.any() else r.new_zeros(()),
        "ratio_max": r[valid].max() if valid.any() else r.new_zeros(()),
    }
    return per_token, {k: v.detach().float() for k, v in stats.items()}


def _check_grpo(logprobs, advantages, reduction, max_tokens, ratio_level, clip, delta) -> None:
    """One-line ValueErrors for bad GRPO arguments."""
    if advantages.shape != (logprobs.shape[0],):
        raise ValueError(f"grpo_loss: advantages must be (B,) = ({logprobs.shape[0]},), got "
                         f"{tuple(advantages.shape)}")  # fmt: skip
    if reduction not in AGGREGATIONS:
        raise ValueError(f"grpo_loss: reduction must be one of {list(AGGREGATIONS)}, got "
                         f"{reduction!r}")  # fmt: skip
    if reduction == "constant" and (max_tokens is None or max_tokens < 1):
        raise ValueError(f"grpo_loss: reduction='constant' needs max_tokens >= 1, got {max_tokens}")
    if ratio_level not in LOG_RATIOS:
        raise ValueError(f"grpo_loss: ratio_level must be one of {list(LOG_RATIOS)}, got "
                         f"{ratio_level!r}")  # fmt: skip
    check_clip_range(*clip, delta, where="grpo_loss")


def check_clip_range(clip_low: float, clip_high: float, delta: float | None, where: str) -> None:
    """0 <= clip_low < 1, clip_high >= 0, delta > 1 + clip_high (else the cap cuts into the clip
    range); one-line ValueError naming ``where``."""
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"{where}: need 0 <= clip_low < 1 and clip_high >= 0, got clip_low="
                         f"{clip_low}, clip_high={clip_high}")  # fmt: skip
    if delta is not None and delta <= 1.0 + clip_high:
        raise ValueError(f"{where}: delta must be > 1 + clip_high = {1.0 + clip_high}, "
                         f"got {delta}")  # fmt: skip


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    beta: float = 0.04,
    reduction: str = "token_mean",
    max_tokens: int | None = None,
    delta: float | None = None,
    ratio_level: str = "token",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO: clipped surrogate with the sequence advantage on every token, plus beta * k3 KL to
    the reference (pi_ref/pi - log(pi_ref/pi) - 1), minus entropy_coef * entropy, all reduced
    alike. Per token, with rho the ratio of ``ratio_level``:

        max(-A min(rho, delta), -A clip(rho, 1 - clip_low, 1 + clip_high)) + beta k3 - c H

    ``reduction`` (TRL's ``loss_type`` in brackets): "token_mean" over the minibatch's valid
    tokens (bnpo), "seq_mean" of each sequence's token mean (grpo, the paper), "constant" sum /
    (B * max_tokens) (dr_grpo, Liu et al. 2025), "global_token_mean" (dapo, Yu et al. 2025): the
    token mean here, with minibatches weighted by their share of the accumulated batch's valid
    tokens (``accumulation_weights``). ``ratio_level="sequence"`` is GSPO's length-normalised
    sequence ratio on every token.

    Args:
        logprobs: (B, T) log pi_theta (with grad); old_logprobs: (B, T) log pi_old;
        ref_logprobs: (B, T) log pi_ref; advantages: (B,) e.g. :func:`grpo_advantages`
            flattened; mask: (B, T) (rows left out of the loss are all 0).
        clip_low, clip_high: ratio clip range [1 - clip_low, 1 + clip_high] (high None: = low).
        beta: KL coefficient. max_tokens: the "constant" normaliser (max_new_tokens).
        delta: cap of the unclipped ratio (None: no cap). entropy: (B, T) policy entropy (with
            grad), needed when entropy_coef > 0.
    Returns:
        fp32 loss; detached stats: ``loss``, ``policy_loss``, ``kl`` (reduced k3), the clip stats
        of ``kernels.ppo_clip_loss`` (clip_frac, approx_kl, ratio_mean, ...) and ``entropy`` when
        entropy_coef > 0.
    """
    clip_high = clip_low if clip_high is None else clip_high
    _check_grpo(logprobs, advantages, reduction, max_tokens, ratio_level, (clip_low, clip_high),
                delta)  # fmt: skip
    agg = AGGREGATIONS[reduction]
    token_adv = advantages.detach().float()[:, None].expand_as(logprobs)  # (B, T)
    if delta is None and ratio_level == "token":  # the fused kernel
        policy, stats = kernels.ppo_clip_loss(
            logprobs, old_logprobs, token_adv.contiguous(), mask,
            clip_low=clip_low, clip_high=clip_high, reduction=agg.kernel_reduction,
        )  # fmt: skip
        if agg.kernel_divisor is not None:
            policy = policy / agg.kernel_divisor(mask, max_tokens)
    else:
        log_ratio = LOG_RATIOS[ratio_level](logprobs, old_logprobs, mask)
        per_token, stats = clipped_surrogate(
            log_ratio, token_adv, mask, clip_low=clip_low, clip_high=clip_high, delta=delta
        )
        policy = agg.reduce(per_token, mask, max_tokens)
    k3 = kl_penalty(logprobs, ref_logprobs.detach(), mask, "k3")  # (B, T)
    kl = agg.reduce(k3, mask, max_tokens)
    loss = policy + beta * kl
    stats = {"policy_loss": policy.detach(), "kl": kl.detach(), **stats}
    if entropy_coef:
        if entropy is None or entropy.shape != logprobs.shape:
            raise ValueError("grpo_loss: entropy_coef > 0 needs entropy of shape (B, T)")
        ent = agg.reduce(entropy.float(), mask, max_tokens)
        loss = loss - entropy_coef * ent
        stats["entropy"] = ent.detach()
    return loss, {"loss": loss.detach(), **stats}


def accumulation_weights(masks: list[torch.Tensor], reduction: str) -> list[float]:
    """Weights of the minibatch losses of one optimiser step under ``reduction``.

    By rows (each minibatch's share of the rows) except for reductions with ``by_tokens``
    ("global_token_mean", DAPO): each minibatch's share of the valid tokens, so that the sum of
    weighted token means is the token mean of the whole accumulated batch.

    Args:
        masks: the (M_i, T) loss masks of the step's minibatches.
    Returns:
        one float per minibatch (0 for all when no token is valid).
    """
    if not AGGREGATIONS[reduction].by_tokens:
        total = sum(m.shape[0] for m in masks)
        return [m.shape[0] / total for m in masks]
    tokens = [float(m.sum()) for m in masks]
    total = sum(tokens)
    return [t / total if total > 0 else 0.0 for t in tokens]


# --- which rows carry signal --------------------------------------------------------------------


def truncated_rows(response_ids: torch.Tensor, mask: torch.Tensor, eos_token_id: int):
    """(B,) bool: responses with no EOS inside their mask (cut at max_new_tokens).

    Args:
        response_ids, mask: (B, T) response tokens and their mask (1 up to and including EOS).
    """
    return ~((response_ids == eos_token_id) & mask.bool()).any(dim=1)


def zero_variance_groups(rewards: torch.Tensor) -> torch.Tensor:
    """(G,) bool: groups whose K rewards are all equal (no learning signal; DAPO drops them).

    Args:
        rewards: (G, K).
    """
    return rewards.amax(dim=1) == rewards.amin(dim=1)


def loss_rows(
    response_ids: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    eos_token_id: int,
    *,
    mask_truncated: bool = False,
    drop_zero_variance: bool = False,
) -> torch.Tensor:
    """(B,) bool: the rows the loss keeps; truncated responses (TRL's
    ``mask_truncated_completions``) and zero-variance groups (DAPO) leave when asked.

    Args:
        response_ids, mask: (B, T); rewards: (B,) in prompt-major groups of ``group_size``.
    """
    keep = torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device)
    if mask_truncated:
        keep &= ~truncated_rows(response_ids, mask, eos_token_id)
    if drop_zero_variance:
        flat = zero_variance_groups(rewards.view(-1, group_size))  # (G,)
        keep &= ~flat.repeat_interleave(group_size)
    return keep


class ZeroVarianceWatch:
    """Counts rollouts in a row where every group had zero reward variance; says when to warn
    (once per run, after ``patience`` such rollouts; None: never)."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.streak = 0
        self.warned = False

    def update(self, all_zero: bool) -> bool:
        """Record one rollout; True exactly once, when the streak first reaches ``patience``."""
        self.streak = self.streak + 1 if all_zero else 0
        if self.patience is None or self.warned or self.streak < self.patience:
            return False
        self.warned = True
        return True
