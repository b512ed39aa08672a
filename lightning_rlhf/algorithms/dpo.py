"""DPO: direct preference optimisation on (prompt, chosen, rejected) pairs (Rafailov et al. 2023,
"Direct Preference Optimization"); optional cDPO label smoothing and the IPO loss (ALGORITHMS.md 3).

Sequence log-likelihoods are masked SUMS of response log-probs; the reference is a frozen copy of
the initial policy (or the LoRA base with adapters disabled) and runs live, under no_grad.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_rlhf.algorithms.alol import FrozenReference
from lightning_rlhf.algorithms.base import RLHFModule
from lightning_rlhf.checks import check_range
from lightning_rlhf.demo import DemoStage
from lightning_rlhf.losses.preference import dpo_loss
from lightning_rlhf.models import ModelConfig, response_logprobs


def sequence_logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """l(y|x) of every candidate of a (B, N, L) pair/ranked batch under ``model``: (B, N) fp32."""
    ids, am, rm = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    b, n, length = ids.shape
    flat = [t.reshape(b * n, length) for t in (ids, am, rm)]  # (B*N, L)
    return response_logprobs(model, *flat).sum(-1).view(b, n)  # (B, N)


def distinct_pairs(batch: dict) -> torch.Tensor:
    """(B,) True where chosen and rejected differ as token sequences (truncation can make two
    different texts equal); identical pairs carry no preference and are skipped."""
    ids, am = batch["input_ids"], batch["attention_mask"]  # (B, 2, L)
    same = (ids[:, 0] == ids[:, 1]).all(-1) & (am[:, 0] == am[:, 1]).all(-1)  # (B,)
    return ~same


class DPO(FrozenReference, RLHFModule):
    """DPO on preference pairs (data format "pair").

    Args:
        policy: the model to train (usually the SFT export).
        beta: inverse temperature of the implicit reward beta * (l_theta - l_ref).
        reference_free: drop the reference terms (no reference model is built).
        label_smoothing: cDPO's assumed label-noise rate.
        loss_type: "sigmoid" (DPO) or "ipo".
        Other arguments: those of :class:`RLHFModule`.
    """

    data_format = "pair"
    frozen_modules = ("reference",)
    demo_stages = (
        DemoStage(
            "dpo",
            "dpo/arithmetic.yaml",
            order=60,
            overrides=("--model.init_args.policy.name_or_path", "{run}/sft/export"),
            quick=("--trainer.max_steps", "25", "--data.num_train", "1000", "--data.num_val", "64"),
        ),
    )

    def __init__(
        self,
        policy: ModelConfig,
        beta: float = 0.1,
        reference_free: bool = False,
        label_smoothing: float = 0.0,
        loss_type: Literal["sigmoid", "ipo"] = "sigmoid",
        lr: float = 5e-7,
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, lr=lr, **kwargs)
        self.save_hyperparameters()
        check_range(self, "beta", beta, gt=0)
        check_range(self, "label_smoothing", label_smoothing, ge=0, lt=0.5)
        self.reference = None
        self.skipped_pairs = 0

    def build_frozen(self) -> None:
        if not self.hparams.reference_free:
            super().build_frozen()

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict] | None:
        keep = distinct_pairs(batch)  # (B,)
        skipped = int((~keep).sum())
        if skipped:
            self.skipped_pairs += skipped
            batch = {k: v[keep] for k, v in batch.items() if isinstance(v, torch.Tensor)}
            if not keep.any():
                return None
        logps = sequence_logps(self.policy, batch)  # (B, 2)
        ref = None
        if not self.hparams.reference_free:
            with torch.no_grad(), self.reference_model() as reference:
                ref = sequence_logps(reference, batch)  # (B, 2)
        loss, stats = dpo_loss(
            logps[:, 0],
            logps[:, 1],
            None if ref is None else ref[:, 0],
            None if ref is None else ref[:, 1],
            beta=self.hparams.beta,
            reference_free=self.hparams.reference_free,
            label_smoothing=self.hparams.label_smoothing,
            loss_type=self.hparams.loss_type,
        )
        return loss, {**stats, "skipped_pairs": float(self.skipped_pairs)}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        out = self._loss(batch)
        if out is None:
            self.log("train/skipped_pairs", float(self.skipped_pairs))
            return None
        loss, stats = out
        self.log_stats("train", stats, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.count_tokens(batch["attention_mask"])
        return self.guard_loss(loss)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self._loss(batch)
        if out is not None:
            stats = {k: v for k, v in out[1].items() if k != "skipped_pairs"}
            self.log_stats("val", stats, batch_size=batch["input_ids"].shape[0], sync_dist=True)
