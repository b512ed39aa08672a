"""Reward model: a scalar head on the last real token, trained with the Bradley–Terry loss.

The model is a ``num_labels=1`` Hugging Face sequence classifier, so its export is loadable by
``AutoModelForSequenceClassification`` and any such classifier can serve as a reward later.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_rlhf.algorithms.base import RLHFModule
from lightning_rlhf.data.collate import flatten_candidates
from lightning_rlhf.losses import bradley_terry_loss
from lightning_rlhf.models import load_reward_model, sequence_scores


class RewardModel(RLHFModule):
    """Bradley–Terry reward model on (prompt, chosen, rejected) pairs (data format "pair").

    Args: those of :class:`RLHFModule`; ``policy`` names the backbone (e.g. the SFT export),
    which gets a fresh scalar head.
    """

    data_format = "pair"

    def build_policy(self) -> nn.Module:
        return load_reward_model(self.policy_config, self.tokenizer)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        ids, am, _ = flatten_candidates(batch)  # (B*2, L): chosen, rejected of each prompt
        scores = sequence_scores(self.policy, ids, am).view(batch["input_ids"].shape[:2])  # (B, 2)
        return bradley_terry_loss(scores[:, 0], scores[:, 1])
