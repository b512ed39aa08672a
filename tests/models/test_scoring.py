"""The fused-head guard of ``models.response_logprobs``: known head transforms stay on the no-logits
path, anything the probe cannot reproduce falls back to the model's own logits with a warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from transformers import AutoConfig

from lightning_rlhf.data.tasks import get_tokenizer
from lightning_rlhf.models import (
    LoraConfig,
    ModelConfig,
    load_causal_lm,
    response_logprobs,
    scoring,
)
from lightning_rlhf.models.scoring import fused_head, head_transform
from tests.algorithms.e2e import TINY
from tests.models.architectures import ARCHITECTURES
from tests.models.test_loading import _batch, _naive_logprobs


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("arithmetic")


@pytest.mark.parametrize(
    ("model_type", "options", "want"),
    [
        ("llama", {}, (None, None)),
        ("gemma2", {"final_logit_softcapping": 30.0}, (None, 30.0)),
        ("granite", {"logits_scaling": 8.0}, (0.125, None)),
        ("cohere", {"logit_scale": 0.0625}, (0.0625, None)),
        ("falcon_h1", {"lm_head_multiplier": 3.0}, (3.0, None)),
        ("recurrent_gemma", {"logits_soft_cap": 30.0}, (None, 30.0)),
        ("mpt", {"logit_scale": "inv_sqrt_d_model"}, (None, None)),  # not a number: probe decides
    ],
)
def test_head_transform_reads_each_architectures_key(model_type, options, want):
    assert head_transform(AutoConfig.for_model(model_type, **options)) == want


class _ScaledHead(nn.Linear):
    """An lm_head whose output is scaled by 2.5 in its forward: no config key says so."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2.5


def _tiny(tok, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return load_causal_lm(ModelConfig(config={**TINY, **overrides}), tok)


def test_normal_model_stays_fused_and_is_probed_once(tok):
    model = _tiny(tok)
    ids, attn, resp = _batch(tok)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        first = response_logprobs(model, ids, attn, resp)
    assert fused_head(model) is not None
    model.forward = None  # a second call must not run the full forward (probe done)
    torch.testing.assert_close(response_logprobs(model, ids, attn, resp), first)


def test_unknown_head_scaling_is_detected_and_falls_back(tok):
    model = _tiny(tok)
    old = model.lm_head
    model.lm_head = _ScaledHead(old.in_features, old.out_features, bias=False)
    model.lm_head.weight = old.weight
    ids, attn, resp = _batch(tok)
    with pytest.warns(UserWarning, match=r"llama: fused lm_head log-probs differ") as record:
        got = response_logprobs(model, ids, attn, resp)
    assert len([w for w in record if "response_logprobs" in str(w.message)]) == 1
    assert fused_head(model) is None
    torch.testing.assert_close(got, _naive_logprobs(model, ids, attn, resp), atol=1e-5, rtol=1e-5)
    got.sum().backward()
    assert model.lm_head.weight.grad.abs().sum() > 0  # the fallback path still trains the head
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the verdict is remembered: no second probe, no warning
        response_logprobs(model, ids, attn, resp)


class _MaskedHead(nn.Linear):
    """An lm_head that masks the last 10 vocabulary entries to -inf (a padded vocabulary)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = super().forward(x)
        return torch.cat([z[..., :-10], torch.full_like(z[..., -10:], float("-inf"))], -1)


def test_unknown_softcap_key_and_masked_vocabulary_are_detected(tok, monkeypatch):
    """A soft-cap under a key the list does not know, and -inf logits the weight cannot give."""
    monkeypatch.setattr(scoring, "_SOFTCAP_KEYS", ("final_logit_softcapping",))
    torch.manual_seed(0)
    gemma = load_causal_lm(ModelConfig(config=ARCHITECTURES["recurrent_gemma"]), tok).eval()
    masked = _tiny(tok).eval()
    old = masked.lm_head
    masked.lm_head = _MaskedHead(old.in_features, old.out_features, bias=False)
    masked.lm_head.weight = old.weight
    ids, attn, resp = _batch(tok)
    for model, arch in ((gemma, "recurrent_gemma"), (masked, "llama")):
        with pytest.warns(UserWarning, match=f"{arch}: fused lm_head log-probs differ"):
            got = response_logprobs(model, ids, attn, resp)
        assert fused_head(model) is None
        want = _naive_logprobs(model, ids, attn, resp)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_probe_in_train_mode_with_dropout_restores_modes_and_works_under_no_grad(tok):
    model = _tiny(tok, attention_dropout=0.5).train()
    model.model.layers[0].eval()  # a mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    ids, attn, resp = _batch(tok)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        out = response_logprobs(model, ids, attn, resp)
    assert not out.requires_grad and fused_head(model) is not None
    assert [m.training for m in model.modules()] == modes


def test_peft_wrapper_probes_the_base_once(tok):
    pytest.importorskip("peft", reason="LoRA needs peft (the `lora` extra)")
    torch.manual_seed(0)
    model = load_causal_lm(ModelConfig(config=TINY, lora=LoraConfig(r=4, alpha=8)), tok)
    ids, attn, resp = _batch(tok)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = response_logprobs(model.eval(), ids, attn, resp)
    assert fused_head(model) is not None and fused_head(model.get_base_model()) is not None
    torch.testing.assert_close(got, _naive_logprobs(model, ids, attn, resp), atol=1e-5, rtol=1e-5)


def test_decoder_that_is_not_a_decoder_falls_back_cleanly(tok):
    """modernbert-decoder's get_decoder() is its output Linear: the fused call cannot run."""
    config = {"model_type": "modernbert-decoder", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
              "local_attention": 16}
    torch.manual_seed(0)
    try:
        model = load_causal_lm(ModelConfig(config=config), tok).eval()
    except (ValueError, KeyError) as err:  # pragma: no cover - an older transformers
        pytest.skip(f"modernbert-decoder not buildable here: {err}")
    ids, attn, resp = _batch(tok)
    with pytest.warns(UserWarning, match="modernbert-decoder: the fused lm_head path failed"):
        got = response_logprobs(model, ids, attn, resp)
    assert fused_head(model) is None
    torch.testing.assert_close(got, _naive_logprobs(model, ids, attn, resp), atol=1e-5, rtol=1e-5)
