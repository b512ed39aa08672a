"""Generation: the one place responses are sampled (or decoded greedily) from a policy.

Prompts come left-padded (the data module's ``prompt_input_ids``); responses come back
right-padded with a mask that ends at (and includes) the first EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase


@dataclass
class Rollout:
    """Sampled responses to a batch of prompts.

    Attributes:
        prompt_ids: (B, P) left-padded prompt tokens; prompt_mask: (B, P).
        response_ids: (B, T) right-padded response tokens; response_mask: (B, T) 1 up to and
            including the first EOS (or to the length limit).
        responses: the B decoded responses (special tokens removed).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    responses: list[str]

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt + response: (input_ids, attention_mask, response_mask), each (B, P + T)."""
        input_ids = torch.cat([self.prompt_ids, self.response_ids], dim=1)
        attention_mask = torch.cat([self.prompt_mask, self.response_mask], dim=1)
        response_mask = torch.cat([torch.zeros_like(self.prompt_mask), self.response_mask], dim=1)
        return input_ids, attention_mask, response_mask


def response_mask_until_eos(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on every token up to and including the first EOS of each row, 0 after.

    Args:
        response_ids: (B, T) generated tokens.
    Returns:
        (B, T) long mask.
    """
    is_eos = (response_ids == eos_token_id).long()
    eos_before = is_eos.cumsum(-1) - is_eos  # (B, T) number of EOS strictly before t
    return (eos_before == 0).long()


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
) -> Rollout:
    """Sample (or greedily decode) one response per prompt, KV cache on, model in eval mode.

    Args:
        model: a causal LM (HF or peft).
        prompt_ids: (B, P) left-padded; prompt_mask: (B, P).
    Returns:
        A :class:`Rollout`; the model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            top_k=top_k if do_sample else None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
        )
    finally:
        model.train(was_training)
    response_ids = out[:, prompt_ids.shape[1] :]  # (B, T)
    response_mask = response_mask_until_eos(response_ids, tokenizer.eos_token_id)
    response_ids = response_ids.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    responses = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, responses)


def rank_seed(seed: int, rank: int) -> int:
    """The sampling seed of ``rank`` in a run seeded with ``seed``: distinct for every rank,
    ``seed`` itself for rank 0."""
    return (seed + 1_000_003 * rank) % (2**63 - 1)


def left_pad_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise raw prompts, left-padded, for :func:`generate`: ((B, P) ids, (B, P) mask)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)
