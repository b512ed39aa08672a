"""Offline preference losses (losses/README.md §3): DPO (Rafailov et al. 2023) with its
reference-free, conservative (cDPO, label smoothing), robust (Chowdhury et al. 2024), hinge
(SLiC-HF), IPO (Azar et al. 2023) and SimPO (Meng et al. 2024) forms and an RPO SFT term, and PRO,
preference ranking optimisation over ranked lists (Song et al. 2023, "Preference Ranking
Optimization for Human Alignment")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Stats = dict[str, torch.Tensor]

# --- DPO ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DPOParams:
    """The scalars a DPO variant may use: beta, the label-noise rate eps, SimPO's margin gamma."""

    beta: float
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.0


def _dpo_sigmoid(h: torch.Tensor, p: DPOParams) -> torch.Tensor:
    """DPO / cDPO: (1 - eps) * -log sig(beta h) + eps * -log sig(-beta h): (B,)."""
    z = p.beta * h
    eps = p.label_smoothing
    return -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def _dpo_robust(h: torch.Tensor, p: DPOParams) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO"), unbiased under label flips at
    rate eps: ((1 - eps) * -log sig(beta h) - eps * -log sig(-beta h)) / (1 - 2 eps): (B,)."""
    z = p.beta * h
    eps = p.label_smoothing
    return (-(1.0 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)


def _dpo_hinge(h: torch.Tensor, p: DPOParams) -> torch.Tensor:
    """SLiC-HF's calibration hinge (Zhao et al. 2023) on the reference-normalised margin, as RSO
    (Liu et al. 2024) and TRL's "hinge": max(0, 1 - beta h) = beta max(0, 1/beta - h): (B,)."""
    return torch.relu(1.0 - p.beta * h)


def _dpo_ipo(h: torch.Tensor, p: DPOParams) -> torch.Tensor:
    """IPO (Azar et al. 2023, eq. 17): (h - 1 / (2 beta))^2: (B,)."""
    return (h - 1.0 / (2.0 * p.beta)) ** 2


def _dpo_simpo(h: torch.Tensor, p: DPOParams) -> torch.Tensor:
    """SimPO (Meng et al. 2024) on length-averaged, reference-free h:
    (1 - eps) * -log sig(beta h - gamma) + eps * -log sig(-(beta h - gamma)): (B,)."""
    z = p.beta * h - p.simpo_gamma
    eps = p.label_smoothing
    return -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


@dataclass(frozen=True)
class DPOVariant:
    """One DPO loss: its per-pair function, whether it uses a reference, whether it always
    length-averages the log-likelihoods, whether label smoothing applies."""

    fn: Callable[[torch.Tensor, DPOParams], torch.Tensor]
    reference: bool = True
    averaged: bool = False
    smoothing: bool = False


DPO_LOSSES: dict[str, DPOVariant] = {
    "sigmoid": DPOVariant(_dpo_sigmoid, smoothing=True),
    "robust": DPOVariant(_dpo_robust, smoothing=True),
    "hinge": DPOVariant(_dpo_hinge),
    "ipo": DPOVariant(_dpo_ipo),
    "simpo": DPOVariant(_dpo_simpo, reference=False, averaged=True, smoothing=True),
}


def _check_dpo(logps: tuple, lengths: tuple, p: DPOParams, reference_free: bool, loss_type: str,
               needs_lengths: bool) -> None:  # fmt: skip
    """One-line ValueErrors for bad DPO arguments; ``logps`` = (chosen, rejected, ref_c, ref_r),
    ``lengths`` = (chosen, rejected) token counts."""
    if loss_type not in DPO_LOSSES:
        raise ValueError(
            f"dpo_loss: unknown loss_type {loss_type!r}; choose from {list(DPO_LOSSES)}"
        )
    variant, ls = DPO_LOSSES[loss_type], p.label_smoothing
    if p.beta <= 0:
        raise ValueError(f"dpo_loss: beta must be > 0, got {p.beta}")
    if not 0.0 <= ls < 0.5:
        raise ValueError(f"dpo_loss: label_smoothing must be in [0, 0.5), got {ls}")
    if ls > 0 and not variant.smoothing:
        smoothing = [name for name, v in DPO_LOSSES.items() if v.smoothing]
        raise ValueError(f"dpo_loss: label_smoothing applies to loss_type in {smoothing}, "
                         f"not {loss_type!r}")  # fmt: skip
    names = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    shape = logps[0].shape
    uses_ref = variant.reference and not reference_free
    for name, t in zip(names + ("chosen_lengths", "rejected_lengths"), logps + lengths):
        if t is None:
            if name.startswith("ref_") and uses_ref:
                raise ValueError(f"dpo_loss: {name} is None; pass it or set reference_free=True")
            if name.endswith("_lengths") and needs_lengths:
                raise ValueError(f"dpo_loss: {name} is None; loss_type={loss_type!r}, "
                                 "length_average or sft_weight need the token counts")  # fmt: skip
        elif t.dim() != 1 or t.shape != shape:
            raise ValueError(
                f"dpo_loss: {name} must be (B,) = {tuple(shape)}, got {tuple(t.shape)}"
            )
    if needs_lengths and any(bool((t <= 0).any()) for t in lengths):
        raise ValueError("dpo_loss: chosen_lengths and rejected_lengths must be > 0")


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
    simpo_gamma: float = 0.5,
    length_average: bool = False,
    sft_weight: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """DPO and its variants, mean over pairs, on h = (l(y_w) - l_ref(y_w)) - (l(y_l) - l_ref(y_l)).

    With z = beta h and eps = ``label_smoothing``, per pair (``loss_type``):

    - "sigmoid" (DPO, Rafailov et al. 2023; cDPO when eps > 0):
      (1 - eps) * -log sig(z) + eps * -log sig(-z)
    - "robust" (Chowdhury et al. 2024): ((1 - eps) * -log sig(z) - eps * -log sig(-z)) / (1 - 2 eps)
    - "hinge" (SLiC-HF, Zhao et al. 2023, margin 1 / beta): max(0, 1 - z)
    - "ipo" (Azar et al. 2023, eq. 17): (h - 1 / (2 beta))^2
    - "simpo" (Meng et al. 2024): h = l(y_w) / |y_w| - l(y_l) / |y_l| (no reference),
      (1 - eps) * -log sig(z - gamma) + eps * -log sig(-(z - gamma)), gamma = ``simpo_gamma``.

    ``length_average`` divides every l (policy and reference) by its token count first (TRL's
    "ipo" does this; the IPO paper uses sums). ``reference_free`` drops the l_ref terms.
    ``sft_weight`` alpha adds RPO's NLL of the chosen responses (Pang et al. 2024), averaged over
    all chosen tokens of the batch as TRL's ``rpo_alpha``: alpha * -sum_b l(y_w) / sum_b |y_w|.

    Args:
        chosen_logps, rejected_logps: (B,) l_theta(y|x) = masked sums of response log-probs.
        ref_chosen_logps, ref_rejected_logps: (B,) the same under pi_ref (detached here); may be
            None when reference_free or loss_type="simpo".
        beta: inverse temperature of the implicit reward beta * (l_theta - l_ref).
        chosen_lengths, rejected_lengths: (B,) response token counts, needed by "simpo",
            length_average and sft_weight.
    Returns:
        loss: scalar; stats (detached): ``loss``, ``accuracy`` (fraction with h > 0), ``margin``
        (mean beta h), ``chosen_reward`` / ``rejected_reward`` (mean implicit rewards
        beta (l_theta - l_ref), or beta l_theta without a reference), and ``sft_loss`` (the
        unweighted NLL) when sft_weight > 0.
    """
    p = DPOParams(float(beta), float(label_smoothing), float(simpo_gamma))
    variant = DPO_LOSSES.get(loss_type)
    average = length_average or (variant is not None and variant.averaged)
    logps = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    lengths = (chosen_lengths, rejected_lengths)
    _check_dpo(logps, lengths, p, reference_free, loss_type, average or sft_weight > 0)
    chosen_ratio, rejected_ratio = chosen_logps.float(), rejected_logps.float()  # (B,)
    if variant.reference and not reference_free:
        chosen_ratio = chosen_ratio - ref_chosen_logps.detach().float()
        rejected_ratio = rejected_ratio - ref_rejected_logps.detach().float()
    if average:
        chosen_ratio = chosen_ratio / chosen_lengths.float()
        rejected_ratio = rejected_ratio / rejected_lengths.float()
    h = chosen_ratio - rejected_ratio  # (B,)
    loss = variant.fn(h, p).mean()
    stats = {
        "accuracy": (h > 0).float().mean(),
        "margin": beta * h.mean(),
        "chosen_reward": beta * chosen_ratio.mean(),
        "rejected_reward": beta * rejected_ratio.mean(),
    }
    if sft_weight > 0:
        stats["sft_loss"] = -chosen_logps.float().sum() / chosen_lengths.float().sum()
        loss = loss + sft_weight * stats["sft_loss"]
    stats["loss"] = loss
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
