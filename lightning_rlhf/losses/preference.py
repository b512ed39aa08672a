"""Offline preference losses (losses/README.md §3): DPO (Rafailov et al. 2023) with its
reference-free, conservative (cDPO, label smoothing) and IPO (Azar et al. 2023) forms, and PRO,
preference ranking optimisation over ranked lists (Song et al. 2023, "Preference Ranking
Optimization for Human Alignment")."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Stats = dict[str, torch.Tensor]

# --- DPO ----------------------------------------------------------------------------------------


def _dpo_sigmoid(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """(1 - ls) * -log sigmoid(beta h) + ls * -log sigmoid(-beta h): (B,) (cDPO when ls > 0)."""
    z = beta * h
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def _dpo_ipo(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """IPO: (h - 1 / (2 beta))^2: (B,). Label smoothing does not apply (checked by the caller)."""
    return (h - 1.0 / (2.0 * beta)) ** 2


DPO_LOSSES: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "sigmoid": _dpo_sigmoid,
    "ipo": _dpo_ipo,
}


def _check_dpo(logps: tuple, beta: float, reference_free: bool, ls: float, loss_type: str):
    """One-line ValueErrors for bad DPO arguments; ``logps`` = (chosen, rejected, ref_c, ref_r)."""
    if loss_type not in DPO_LOSSES:
        raise ValueError(
            f"dpo_loss: unknown loss_type {loss_type!r}; choose from {list(DPO_LOSSES)}"
        )
    if beta <= 0:
        raise ValueError(f"dpo_loss: beta must be > 0, got {beta}")
    if not 0.0 <= ls < 0.5:
        raise ValueError(f"dpo_loss: label_smoothing must be in [0, 0.5), got {ls}")
    if ls > 0 and loss_type == "ipo":
        raise ValueError("dpo_loss: label_smoothing applies to loss_type='sigmoid' only, not 'ipo'")
    names = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    shape = logps[0].shape
    for name, t in zip(names, logps):
        if t is None:
            if not reference_free:
                raise ValueError(f"dpo_loss: {name} is None; pass it or set reference_free=True")
        elif t.dim() != 1 or t.shape != shape:
            raise ValueError(
                f"dpo_loss: {name} must be (B,) = {tuple(shape)}, got {tuple(t.shape)}"
            )


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    *,
    beta: float = 0.1,
    reference_free: bool = False,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, Stats]:
    """DPO loss, mean over pairs. h = (l_theta(y_w) - l_ref(y_w)) - (l_theta(y_l) - l_ref(y_l)).

    "sigmoid": -log sigmoid(beta h); with label_smoothing ls (cDPO, Mitchell 2023)
    (1 - ls) * -log sigmoid(beta h) + ls * -log sigmoid(-beta h). "ipo": (h - 1/(2 beta))^2 on
    the same h (the IPO paper's sums; pass length-normalised log-probs for TRL's averaged form).
    reference_free drops the l_ref terms (the ref arguments may then be None).

    Args:
        chosen_logps, rejected_logps: (B,) l_theta(y|x) = masked sums of response log-probs.
        ref_chosen_logps, ref_rejected_logps: (B,) the same under pi_ref (detached here).
        beta: inverse temperature of the implicit reward beta * (l_theta - l_ref).
    Returns:
        loss: scalar; stats (detached): ``loss``, ``accuracy`` (fraction with h > 0), ``margin``
        (mean beta h), ``chosen_reward`` / ``rejected_reward`` (mean implicit rewards
        beta (l_theta - l_ref), or beta l_theta when reference_free).
    """
    logps = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    _check_dpo(logps, beta, reference_free, label_smoothing, loss_type)
    chosen_ratio, rejected_ratio = chosen_logps.float(), rejected_logps.float()  # (B,)
    if not reference_free:
        chosen_ratio = chosen_ratio - ref_chosen_logps.detach().float()
        rejected_ratio = rejected_ratio - ref_rejected_logps.detach().float()
    h = chosen_ratio - rejected_ratio  # (B,)
    loss = DPO_LOSSES[loss_type](h, float(beta), float(label_smoothing)).mean()
    stats = {
        "loss": loss,
        "accuracy": (h > 0).float().mean(),
        "margin": beta * h.mean(),
        "chosen_reward": beta * chosen_ratio.mean(),
        "rejected_reward": beta * rejected_ratio.mean(),
    }
    return loss, {k: v.detach() for k, v in stats.items()}


# --- PRO ----------------------------------------------------------------------------------------


def _check_pro(logprobs, mask, rewards, candidates) -> None:
    """One-line ValueErrors for bad shapes, and naming the first bad row / candidate."""
    if logprobs.dim() != 3 or mask.shape != logprobs.shape:
        raise ValueError(
            f"pro_loss: logprobs and mask must be (B, N, T), got {tuple(logprobs.shape)} and "
            f"{tuple(mask.shape)}"
        )
    for name, t in (("rewards", rewards), ("candidate_mask", candidates)):
        if t.shape != logprobs.shape[:2]:
            raise ValueError(f"pro_loss: {name} must be (B, N) = {tuple(logprobs.shape[:2])}")
    empty = candidates & ~mask.bool().any(dim=-1)  # (B, N)
    bad_r = candidates & ~torch.isfinite(rewards)
    later = torch.ones(rewards.shape[1], rewards.shape[1], dtype=torch.bool).triu(1)
    both = candidates[:, :, None] & candidates[:, None, :] & later.to(rewards.device)
    rising = both & (rewards[:, :, None] < rewards[:, None, :])  # (B, N, N) r_k < r_i, i > k
    problems = (
        (empty, "candidate {i} has an empty mask"),
        (bad_r, "candidate {i} has a non-finite reward"),
        (rising.any(dim=1), "rewards are not best first: candidate {i} beats an earlier one"),
    )
    for bad, message in problems:
        if bad.any():
            b, i = (int(x) for x in bad.nonzero()[0])
            raise ValueError(f"pro_loss: row {b}: " + message.format(i=i))
    if not candidates.any(dim=1).all():
        b = int((~candidates.any(dim=1)).nonzero()[0, 0])
        raise ValueError(f"pro_loss: row {b} has no candidates")


def _pro_rank_terms(scores: torch.Tensor, rewards: torch.Tensor, candidates: torch.Tensor):
    """sum_k -log softmax_{i >= k}(s^i / T_k^i)[k] per prompt: (B,), and pairwise accuracy.

    1/T_k^i = r^k - r^i for valid i > k with r^i < r^k; tied or absent candidates are left out
    of step k's softmax (a tie is not a worse response). 1/T_k^k = max_i 1/T_k^i; a step with
    no strictly worse candidate is dropped (it would be a constant).
    """
    N = scores.shape[1]
    diff = rewards[:, :, None] - rewards[:, None, :]  # (B, N, N) [k, i] = r^k - r^i
    later = torch.ones(N, N, dtype=torch.bool, device=scores.device).triu(1)
    pair = later & candidates[:, :, None] & candidates[:, None, :] & (diff > 0)  # (B, N, N)
    inv_t = torch.where(pair, diff, 0.0)  # (B, N, N) 1/T_k^i
    inv_t_self = inv_t.max(dim=2).values  # (B, N) 1/T_k^k
    pos = scores * inv_t_self  # (B, N) s^k / T_k^k
    neg = torch.where(pair, scores[:, None, :] * inv_t, -torch.inf)  # (B, N, N) s^i / T_k^i
    logits = torch.cat([pos[:, :, None], neg], dim=2)  # (B, N, 1 + N)
    terms = torch.where(inv_t_self > 0, torch.logsumexp(logits, dim=2) - pos, 0.0)  # (B, N)
    right = pair & (scores[:, :, None] > scores[:, None, :])  # (B, N, N)
    accuracy = right.sum().float() / pair.sum().clamp(min=1)
    return terms.sum(dim=1), accuracy.detach()


def pro_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    *,
    sft_weight: float | None = None,
    candidate_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """PRO loss (Song et al. 2023; losses/README.md §3), mean over prompts.

    Per prompt with ranked candidates y^1 > ... > y^n, scores s^i = l_theta(y^i) / |y^i|:
    L = sum_{k=1}^{n-1} -log(exp(s^k / T_k^k) / sum_{i>=k} exp(s^i / T_k^i))
        + beta_sft * (-l_theta(y^1)),
    1/T_k^i = r^k - r^i (i > k), 1/T_k^k = max_{i>k}(r^k - r^i), beta_sft = 0.05 (n - 1)^2 with
    n the prompt's number of candidates (``sft_weight`` overrides). The SFT term uses the summed
    l_theta as losses/README.md §3 writes it. Ties: a candidate tied with y^k is left out of step k.

    Args:
        logprobs: (B, N, T) log pi_theta of each candidate's response tokens, best first.
        mask: (B, N, T) nonzero at response tokens; every present candidate needs one.
        rewards: (B, N) finite, non-increasing along N over present candidates.
        candidate_mask: (B, N) bool, False for absent (padding) candidates; default all present.
    Returns:
        loss: fp32 scalar; stats (detached): ``loss``, ``rank_loss`` and ``sft_loss`` (means of
        the two parts, sft_loss = -l_theta(y^1) before weighting), ``pair_accuracy`` (fraction
        of strictly ordered pairs whose scores agree), ``best_score`` (mean s^1).
    Raises:
        ValueError: bad shapes, a present candidate with an empty mask or non-finite reward,
            rewards out of order, or a prompt with no candidates.
    """
    if candidate_mask is None:
        candidate_mask = torch.ones(rewards.shape, dtype=torch.bool, device=rewards.device)
    candidates = candidate_mask.bool()
    _check_pro(logprobs, mask, rewards, candidates)
    valid = mask.bool() & candidates[:, :, None]  # (B, N, T)
    seq = torch.where(valid, logprobs.float(), 0.0).sum(dim=2)  # (B, N) l_theta
    scores = seq / valid.sum(dim=2).clamp(min=1)  # (B, N) s = l_theta / |y|
    rank, accuracy = _pro_rank_terms(scores, rewards.detach().float(), candidates)
    first = candidates.float().argmax(dim=1, keepdim=True)  # (B, 1) index of y^1
    sft = -seq.gather(1, first).squeeze(1)  # (B,)
    n = candidates.sum(dim=1).float()  # (B,)
    beta_sft = 0.05 * (n - 1.0) ** 2 if sft_weight is None else torch.full_like(n, sft_weight)
    loss = (rank + beta_sft * sft).mean()
    stats = {
        "loss": loss,
        "rank_loss": rank.mean(),
        "sft_loss": sft.mean(),
        "pair_accuracy": accuracy,
        "best_score": scores.gather(1, first).mean(),
    }
    return loss, {k: v.detach() for k, v in stats.items()}
