"""Forward passes that turn a model and a batch into per-token log-probs or sequence scores.

Log-probs always come from ``kernels``: from the last hidden states and the lm_head weight through
``kernels.linear_logprobs`` (no (B, L, V) logits tensor), only at response positions.
"""

from __future__ import annotations

import torch
from torch import nn

import kernels


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens, so left and right padding give the same positions.

    Args:
        attention_mask: (B, L) 1 on real tokens.
    Returns:
        (B, L) long positions (0 on left padding).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _unwrap(model: nn.Module) -> nn.Module:
    """The underlying ``PreTrainedModel`` of a peft model (adapters stay active)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _fusable(model: nn.Module) -> bool:
    """Whether the logits are exactly lm_head(hidden): no soft-capping or logit scaling."""
    config = _unwrap(model).config
    return not any(
        getattr(config, k, None)
        for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    )


def response_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of each response token under ``model``, 0 elsewhere.

    Args:
        model: a causal LM (HF ``PreTrainedModel`` or a peft wrapper of one).
        input_ids: (B, L) prompt + response tokens, left or right padded.
        attention_mask: (B, L).
        response_mask: (B, L) 1 on the response tokens to score.
        temperature: divide logits by it (use the sampling temperature for old/ref log-probs).
        return_entropy: also return the per-token entropy of the policy.
    Returns:
        (B, L) fp32 log-probs aligned with ``input_ids`` (position t holds log p(x_t | x_<t));
        with ``return_entropy`` a second (B, L) tensor.
    """
    mask = response_mask.bool().clone()
    mask[:, 0] = False  # the first token has no context to be predicted from
    position_ids = position_ids_from_mask(attention_mask)
    base = _unwrap(model)
    if _fusable(model):
        out = base.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        )
        hidden = out.last_hidden_state[:, :-1][
            mask[:, 1:]
        ]  # (N, H): only rows predicting response tokens
        head = base.get_output_embeddings()
        result = kernels.linear_logprobs(
            hidden,
            head.weight,
            input_ids[mask],
            bias=head.bias,
            temperature=temperature,
            return_entropy=return_entropy,
        )
    else:
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).logits
        result = kernels.sequence_logprobs(
            logits[:, :-1][mask[:, 1:]],
            input_ids[mask],
            temperature=temperature,
            return_entropy=return_entropy,
        )
    return (
        _scatter(result, mask) if not return_entropy else tuple(_scatter(r, mask) for r in result)
    )


def _scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place (N,) values at the True positions of a (B, L) mask, zeros elsewhere."""
    out = values.new_zeros(mask.shape)
    out[mask] = values
    return out


def sequence_scores(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Scalar score of each sequence from a ``num_labels=1`` sequence classifier.

    The score is read at the last real token (from ``attention_mask``), whatever the padding side
    and whatever the pad token (EOS doubling as pad is fine).

    Args:
        input_ids: (B, L); attention_mask: (B, L).
    Returns:
        (B,) fp32 scores.
    """
    base = _unwrap(model)
    position_ids = position_ids_from_mask(attention_mask)
    head = getattr(base, "score", None)
    backbone = getattr(base, base.base_model_prefix, None)
    if head is None or backbone is None:  # an exotic classifier: trust its own pooling
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).last_hidden_state
    last = attention_mask.long().cumsum(-1).argmax(-1)  # (B,) index of the last real token
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
    return head(pooled)[:, 0].float()
