"""Loading Hugging Face causal LMs and reward models, frozen references, log-probs and export."""

from lightning_rlhf.models.loading import (
    LoraConfig,
    ModelConfig,
    export_pretrained,
    frozen_copy,
    load_causal_lm,
    load_reward_model,
    unwrap_peft,
)
from lightning_rlhf.models.reference import build_reference, reference_model
from lightning_rlhf.models.scoring import response_logprobs, sequence_scores

__all__ = [
    "LoraConfig",
    "ModelConfig",
    "build_reference",
    "export_pretrained",
    "frozen_copy",
    "load_causal_lm",
    "load_reward_model",
    "reference_model",
    "response_logprobs",
    "sequence_scores",
    "unwrap_peft",
]
