"""PPO's value model: a causal-LM backbone with a ``Linear(H, 1)`` head on every position.

By default the critic starts from the policy's own weights (Ouyang et al. 2022 start it from the
reward model; here the reward may be a Python scorer, or a reward model with another tokenizer,
so the policy is the one checkpoint that always fits). ``from_reward_model`` is the other option.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from lightning_rlhf.models.loading import (
    ModelConfig,
    load_causal_lm,
    load_reward_model,
    unwrap_peft,
)
from lightning_rlhf.models.scoring import eval_no_grad, position_ids_from_mask


def _backbone(model: nn.Module) -> nn.Module:
    """The transformer body of a HF model (``model.model`` for Llama), unwrapping peft."""
    base = unwrap_peft(model)
    body = getattr(base, base.base_model_prefix, None)
    if body is None:
        raise ValueError(
            f"critic: {type(base).__name__} has no backbone {base.base_model_prefix!r}"
        )
    return body


def output_width(backbone: nn.Module) -> int:
    """H of the ``last_hidden_state`` that ``backbone`` really returns (OPT-350m-style models
    project to ``word_embed_proj_dim``, not ``hidden_size``): one token through it, in eval mode
    and without a graph."""
    ids = torch.zeros(1, 1, dtype=torch.long, device=next(backbone.parameters()).device)
    with eval_no_grad(backbone):
        out = backbone(input_ids=ids, attention_mask=torch.ones_like(ids))
    return out.last_hidden_state.shape[-1]


class ValueModel(nn.Module):
    """V(x, y_<t) for every position of a sequence.

    Args:
        backbone: a HF base model returning ``last_hidden_state`` (B, L, H).
        head: ``Linear(H, 1)``; when None a fresh one with zero weight and bias, so that a new
            critic predicts the same value (0) everywhere: its explained variance starts at 0.
            (A head drawn at unit output scale gave values of std ~0.7 uncorrelated with the
            outcome, three times the spread of the arithmetic task's returns, and kept the
            explained variance below 0 for 15 rollouts and more; see the README, "The
            critic".) H = ``output_width(backbone)``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        if head is None:
            head = nn.Linear(output_width(backbone), 1)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Values at every position.

        Args:
            input_ids, attention_mask: (B, L).
        Returns:
            (B, L) fp32; position l holds the value of the state after token l (so the value
            of the state in which response token t of a sequence with prompt width P is chosen is
            at position P + t - 1).
        """
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
        ).last_hidden_state  # (B, L, H)
        values = self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)  # (B, L)
        return values.to(torch.float32, copy=True)  # not a view: FSDP2 hooks its output

    def response_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int
    ) -> torch.Tensor:
        """Values of the T response states: (B, L) sequences -> (B, T) with T = L - P."""
        return self(input_ids, attention_mask)[:, prompt_length - 1 : -1]  # (B, T)


def critic_from_policy(policy: nn.Module, cfg: ModelConfig, tokenizer) -> ValueModel:
    """A trainable critic whose backbone copies the policy's (a fresh full copy of the base
    weights when the policy is a LoRA model, so the critic never shares adapters)."""
    if hasattr(policy, "get_base_model") and cfg.lora is not None:
        full = load_causal_lm(dataclasses.replace(cfg, lora=None), tokenizer)
        body = _backbone(full)
    else:
        body = copy.deepcopy(_backbone(policy))
    body.requires_grad_(True)
    return ValueModel(body)


def critic_from_reward_model(path: str, tokenizer) -> ValueModel:
    """A critic whose backbone and head start from a reward-model export (same tokenizer)."""
    rm = load_reward_model(ModelConfig(name_or_path=path), tokenizer)
    head = nn.Linear(rm.score.in_features, 1)
    with torch.no_grad():
        head.weight.copy_(rm.score.weight)
        head.bias.zero_()
    body = _backbone(rm)
    body.requires_grad_(True)
    return ValueModel(body, head)
