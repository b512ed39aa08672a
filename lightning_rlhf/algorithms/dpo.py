"""DPO: direct preference optimisation on (prompt, chosen, rejected) pairs (Rafailov et al. 2023,
"Direct Preference Optimization"); optional cDPO label smoothing, robust, hinge, IPO and SimPO
losses and an RPO SFT term (``losses.preference.dpo_loss``; losses/README.md §3).

Sequence log-likelihoods are masked SUMS of response log-probs; the reference is a frozen copy of
the initial policy (or the LoRA base with adapters disabled) and runs live, under no_grad.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_rlhf.algorithms.base import RLHFModule
from lightning_rlhf.checks import check_range
from lightning_rlhf.data.collate import flatten_candidates
from lightning_rlhf.losses.masked import masked_sum
from lightning_rlhf.losses.preference import DPO_LOSSES, dpo_loss
from lightning_rlhf.models import ModelConfig, response_logprobs


def sequence_logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """l(y|x) of every candidate of a (B, N, L) pair/ranked batch under ``model``: (B, N) fp32."""
    b, n = batch["input_ids"].shape[:2]
    ids, am, rm = flatten_candidates(batch)  # (B*N, L)
    return masked_sum(response_logprobs(model, ids, am, rm), rm).view(b, n)  # (B, N)


def response_lengths(batch: dict) -> torch.Tensor:
    """(B, N) number of scored response tokens of each candidate (column 0 is never scored)."""
    return batch["response_mask"][..., 1:].sum(-1)


def distinct_pairs(batch: dict) -> torch.Tensor:
    """(B,) True where chosen and rejected differ as token sequences (truncation can make two
    different texts equal); identical pairs carry no preference and are skipped."""
    ids, am = batch["input_ids"], batch["attention_mask"]  # (B, 2, L)
    same = (ids[:, 0] == ids[:, 1]).all(-1) & (am[:, 0] == am[:, 1]).all(-1)  # (B,)
    return ~same


class DPO(RLHFModule):
    """DPO on preference pairs (data format "pair").

    Args:
        policy: the model to train (usually the SFT export).
        beta: inverse temperature of the implicit reward beta * (l_theta - l_ref).
        reference_free: drop the reference terms (no reference model is built).
        label_smoothing: the assumed label-noise rate eps ("sigmoid": cDPO, "robust", "simpo").
        loss_type: "sigmoid" (DPO), "robust", "hinge", "ipo" or "simpo" (reference-free, no
            reference model is built); see ``losses.preference.dpo_loss``.
        simpo_gamma: SimPO's target margin gamma.
        length_average: divide each sequence log-likelihood by its token count (TRL's IPO).
        sft_weight: weight of RPO's NLL of the chosen responses (TRL's ``rpo_alpha``).
        Other arguments: those of :class:`RLHFModule`.
    """

    data_format = "pair"

    def __init__(
        self,
        policy: ModelConfig,
        beta: float = 0.1,
        reference_free: bool = False,
        label_smoothing: float = 0.0,
        loss_type: Literal["sigmoid", "robust", "hinge", "ipo", "simpo"] = "sigmoid",
        simpo_gamma: float = 0.5,
        length_average: bool = False,
        sft_weight: float = 0.0,
        lr: float = 5e-7,
        **kwargs: Any,
    ) -> None:
        if loss_type not in DPO_LOSSES:
            raise ValueError(f"DPO: unknown loss_type {loss_type!r}; choose from "
                             f"{list(DPO_LOSSES)}")  # fmt: skip
        super().__init__(policy, lr=lr, **kwargs)
        self.save_hyperparameters()
        check_range(self, "beta", beta, gt=0)
        check_range(self, "label_smoothing", label_smoothing, ge=0, lt=0.5)
        self.skipped_pairs = 0

    def needs_reference(self) -> bool:
        """False when reference_free or the loss (SimPO) has no reference term."""
        hp = self.hparams
        return not hp.reference_free and DPO_LOSSES[hp.loss_type].reference

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict] | None:
        """The DPO loss over the batch's distinct pairs (None when every pair is identical)."""
        keep = distinct_pairs(batch)  # (B,)
        skipped = int((~keep).sum())
        if skipped:
            self.skipped_pairs += skipped
            batch = {k: v[keep] for k, v in batch.items() if isinstance(v, torch.Tensor)}
            if not keep.any():  # the count shows in the next batch's stats (it is cumulative)
                return None
        hp = self.hparams
        logps = sequence_logps(self.policy, batch)  # (B, 2)
        lengths = response_lengths(batch)  # (B, 2)
        ref = None
        if self.needs_reference():
            with torch.no_grad(), self.reference_model() as reference:
                ref = sequence_logps(reference, batch)  # (B, 2)
        loss, stats = dpo_loss(
            logps[:, 0],
            logps[:, 1],
            None if ref is None else ref[:, 0],
            None if ref is None else ref[:, 1],
            beta=hp.beta,
            reference_free=hp.reference_free,
            label_smoothing=hp.label_smoothing,
            loss_type=hp.loss_type,
            simpo_gamma=hp.simpo_gamma,
            length_average=hp.length_average,
            sft_weight=hp.sft_weight,
            chosen_lengths=lengths[:, 0],
            rejected_lengths=lengths[:, 1],
        )
        return loss, {**stats, "skipped_pairs": float(self.skipped_pairs)}

    def compute_val_loss(self, batch: dict) -> tuple[torch.Tensor, dict] | None:
        out = self.compute_loss(batch)
        return out and (out[0], {k: v for k, v in out[1].items() if k != "skipped_pairs"})
