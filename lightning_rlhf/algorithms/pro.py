"""PRO: preference ranking optimisation over ranked lists (Song et al. 2023, "Preference Ranking
Optimization for Human Alignment"; losses/README.md §3). Reference-free: scores are length-
normalised policy log-likelihoods, temperatures come from reward gaps, plus an SFT term on the
best response."""

from __future__ import annotations

from typing import Any

import torch

from lightning_rlhf.algorithms.base import RLHFModule
from lightning_rlhf.checks import check_range
from lightning_rlhf.data.collate import flatten_candidates
from lightning_rlhf.losses.preference import pro_loss
from lightning_rlhf.models import ModelConfig, response_logprobs


class PRO(RLHFModule):
    """PRO on ranked candidate lists, best first (data format "ranked", with rewards).

    Args:
        policy: the model to train (usually the SFT export).
        sft_weight: weight of the SFT term -l_theta(y^1); None = 0.05 * (N - 1)^2 (the paper).
        Other arguments: those of :class:`RLHFModule`.
    """

    data_format = "ranked"

    def __init__(
        self,
        policy: ModelConfig,
        sft_weight: float | None = None,
        lr: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, lr=lr, **kwargs)
        self.save_hyperparameters()
        check_range(self, "sft_weight", sft_weight, ge=0)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        ids, rm = batch["input_ids"], batch["response_mask"]
        if ids.dim() != 3 or ids.shape[1] < 2:
            raise ValueError(
                f"PRO needs ranked lists of >= 2 responses, got a batch of shape "
                f"{tuple(ids.shape)} (rows {batch['index'].tolist()[:8]})"
            )
        if "rewards" not in batch:
            raise ValueError("PRO needs a reward per candidate (data field `rewards`), got none")
        logprobs = response_logprobs(self.policy, *flatten_candidates(batch))  # (B*N, L)
        logprobs = logprobs.view(ids.shape)  # (B, N, L)
        return pro_loss(logprobs, rm, batch["rewards"], sft_weight=self.hparams.sft_weight)
