"""Supervised fine-tuning: masked next-token NLL on response tokens.

Loss = -sum_{b,t} m_bt log pi(y_bt) / sum_{b,t} m_bt, the token mean over the batch
(losses/README.md §1): long responses weigh more than short ones, as in standard LM training.
"""

from __future__ import annotations

import torch

from lightning_rlhf.algorithms.base import RLHFModule
from lightning_rlhf.losses import sft_loss
from lightning_rlhf.models import response_logprobs


class SFT(RLHFModule):
    """Supervised fine-tuning on prompt/response pairs (data format "response").

    Args: those of :class:`RLHFModule`.
    """

    data_format = "response"

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        logprobs = response_logprobs(
            self.policy, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        )
        return sft_loss(logprobs, batch["response_mask"])
