"""Forward passes that turn a model and a batch into per-token log-probs or sequence scores.

Log-probs always come from ``kernels``, only at response positions: from the last hidden states
and the lm_head weight through ``kernels.linear_logprobs`` (no (B, L, V) logits tensor, with the
model's logit scale / soft-cap applied in the kernel) when a one-time probe per model object shows
that this reproduces the model's own logits, else from those logits (``sequence_logprobs``).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import kernels
from lightning_rlhf.models.loading import unwrap_peft


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens, so left and right padding give the same positions.

    Args:
        attention_mask: (B, L) 1 on real tokens.
    Returns:
        (B, L) long positions (0 on left padding).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# Config keys of known head transforms (read from the text config): a multiplier, a divisor, or
# a soft-cap c of c * tanh(z / c). A fast path only: the probe below checks every model anyway.
_SCALE_KEYS = ("logit_scale", "lm_head_multiplier")  # Cohere, Falcon-H1: logits * v
_DIVISOR_KEYS = ("logits_scaling",)  # Granite: logits / v
_SOFTCAP_KEYS = ("final_logit_softcapping", "logits_soft_cap")  # Gemma 2/3, RecurrentGemma
_PROBE_TOKENS = 16
# Per-model verdict: the fused head's transform, or None = full logits (keyed weakly by model).
_VERDICTS: weakref.WeakKeyDictionary[nn.Module, _FusedHead | None] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _FusedHead:
    """logits = softcap(logit_scale * lm_head(decoder hidden states)); None = no such step."""

    logit_scale: float | None
    softcap: float | None


def _number(config: Any, key: str) -> float | None:
    """``config.key`` when it is a real number other than None (strings such as MPT's are not)."""
    value = getattr(config, key, None)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if is_number else None


def head_transform(config: Any) -> tuple[float | None, float | None]:
    """(logit_scale, softcap) that a model's config declares for its lm_head output.

    Known keys: ``logit_scale`` and ``lm_head_multiplier`` multiply, ``logits_scaling`` divides,
    ``final_logit_softcapping`` / ``logits_soft_cap`` soft-cap after the scale (all read from the
    text config of a multimodal model). A factor of 1 is no transform.
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = 1.0
    for key in _SCALE_KEYS:
        scale *= _number(config, key) or 1.0
    for key in _DIVISOR_KEYS:
        scale /= _number(config, key) or 1.0
    caps = [c for c in (_number(config, k) for k in _SOFTCAP_KEYS) if c]
    return (None if scale == 1.0 else scale), (caps[0] if caps else None)


def decoder_hidden_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Last hidden states of a causal LM's decoder, the input of its lm_head (no logits).

    Args:
        model: an HF causal LM or a peft wrapper (adapters stay active).
        input_ids, attention_mask: (B, L); position_ids: (B, L), default from the mask.
    Returns:
        (B, L, H) with H the lm_head's input width (e.g. OPT's ``word_embed_proj_dim``).
    """
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    out = unwrap_peft(model).get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    )
    return out.last_hidden_state


def _model_logits(model: nn.Module, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """(B, L, V) logits of the model's own forward (adapters, soft-caps and all)."""
    return model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).logits


def _fused_logprobs(base: nn.Module, fused: _FusedHead, hidden, targets, **kw):
    """``kernels.linear_logprobs`` of (N, H) hidden states through ``base``'s lm_head."""
    head = base.get_output_embeddings()
    return kernels.linear_logprobs(
        hidden, head.weight, targets, bias=head.bias,
        logit_scale=fused.logit_scale, softcap=fused.softcap, **kw,
    )


@contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off) and no graph for the duration; each module's own mode (train or
    eval) is restored afterwards, so probing a training model changes nothing."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def _probe_tolerance(logits: torch.Tensor) -> float:
    """Largest log-prob gap two correct paths can show: a few roundings of the largest finite
    logit in the model's logits dtype (they are rounded to it), floored for fp32."""
    finite = logits[torch.isfinite(logits)].float()
    top = float(finite.abs().max()) if finite.numel() else 0.0
    return max(1e-4, 8 * torch.finfo(logits.dtype).eps * (1.0 + top))


def _gap(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| in fp32, with equal infinities counting as agreement."""
    got, want = got.float(), want.float()
    return float(torch.where(got == want, 0.0, (got - want).abs()).max())


def _probe_gap(model: nn.Module, base: nn.Module, fused: _FusedHead, device) -> tuple[float, float]:
    """(gap, tolerance) between the fused route and the model's own logits on one fixed sequence
    of ``_PROBE_TOKENS`` tokens: target log-probs and entropies through the kernels, and the
    whole (P-1, V) log-softmax of the head applied by hand (which also sees every other token)."""
    head = base.get_output_embeddings()
    vocab = min(head.weight.shape[0], base.get_input_embeddings().weight.shape[0])
    ids = ((torch.arange(_PROBE_TOKENS, device=device) * 7919 + 3) % vocab)[None]  # (1, P)
    mask, pos = torch.ones_like(ids), torch.arange(_PROBE_TOKENS, device=device)[None]
    with eval_no_grad(model):
        hidden = decoder_hidden_states(model, ids, mask, pos)[0, :-1]  # (P-1, H)
        got = _fused_logprobs(base, fused, hidden, ids[0, 1:], return_entropy=True)
        logits = _model_logits(model, ids, mask, pos)[0, :-1]  # (P-1, V)
        want = kernels.sequence_logprobs(logits, ids[0, 1:], return_entropy=True)
        z = head(hidden).float() * (fused.logit_scale or 1.0)  # (P-1, V)
        if fused.softcap is not None:
            z = fused.softcap * torch.tanh(z / fused.softcap)
        gaps = [_gap(g, w) for g, w in zip(got, want)]
        gaps.append(_gap(z.log_softmax(-1), logits.float().log_softmax(-1)))
    return max(gaps), _probe_tolerance(logits)


def _probe(model: nn.Module, base: nn.Module, device: torch.device) -> _FusedHead | None:
    """The fused head when ``_probe_gap`` is within tolerance, else None with one warning."""
    arch = getattr(base.config, "model_type", type(base).__name__)
    fused = _FusedHead(*head_transform(base.config))
    try:
        gap, tol = _probe_gap(model, base, fused, device)
    except Exception as err:  # noqa: BLE001 - any failure of the fused route means "not fusable"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        warnings.warn(
            f"response_logprobs: {arch}: the fused lm_head path failed ({type(err).__name__}: "
            f"{first[:120]}); using the full (N, V) logits for this model",
            stacklevel=3,
        )
        return None
    if gap <= tol:
        return fused
    warnings.warn(
        f"response_logprobs: {arch}: fused lm_head log-probs differ from the model's own logits "
        f"by {gap:.3g} (> {tol:.2g}; logit_scale={fused.logit_scale}, softcap={fused.softcap}); "
        "using the full (N, V) logits for this model",
        stacklevel=3,
    )
    return None


def fused_head(model: nn.Module, device: torch.device | None = None) -> _FusedHead | None:
    """The verdict for ``model``: its fused head, or None for the full-logits path.

    Probed once per model object (see ``_probe``) and remembered; later calls are a dict lookup.
    """
    base = unwrap_peft(model)
    if base in _VERDICTS:
        return _VERDICTS[base]
    if device is None:
        device = next(base.parameters()).device
    verdict = _probe(model, base, device)
    _VERDICTS[base] = verdict
    return verdict


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

    The first call for a model object probes whether its logits are exactly
    ``softcap(scale * lm_head(hidden))`` (``fused_head``); if so, log-probs come from the hidden
    states through ``kernels.linear_logprobs`` (no (B, L, V) logits), else from the model's own
    logits through ``kernels.sequence_logprobs``.

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
    fused = fused_head(model, input_ids.device)
    kw = {"temperature": temperature, "return_entropy": return_entropy}
    if fused is not None:
        hidden = decoder_hidden_states(model, input_ids, attention_mask, position_ids)
        hidden = hidden[:, :-1][mask[:, 1:]]  # (N, H): only rows predicting response tokens
        result = _fused_logprobs(unwrap_peft(model), fused, hidden, input_ids[mask], **kw)
    else:
        logits = _model_logits(model, input_ids, attention_mask, position_ids)  # (B, L, V)
        result = kernels.sequence_logprobs(logits[:, :-1][mask[:, 1:]], input_ids[mask], **kw)
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
    base = unwrap_peft(model)
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
