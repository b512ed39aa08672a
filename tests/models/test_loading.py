"""Model loading, LoRA, export and the log-prob / score forward passes."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.data.tasks import get_tokenizer
from lightning_rlhf.models import (
    LoraConfig,
    ModelConfig,
    export_pretrained,
    frozen_copy,
    load_causal_lm,
    response_logprobs,
)
from lightning_rlhf.models.loading import pad_is_borrowed_eos
from tests.algorithms.e2e import TINY


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("arithmetic")


def _batch(tok):
    rows = [("12+3=", "15"), ("7+80=", "87"), ("99+99=", "198")]
    ids = [
        tok(p).input_ids + tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id]
        for p, r in rows
    ]
    plen = [len(tok(p).input_ids) for p, _ in rows]
    length = max(map(len, ids))
    input_ids = torch.tensor([x + [tok.pad_token_id] * (length - len(x)) for x in ids])
    attention = torch.tensor([[1] * len(x) + [0] * (length - len(x)) for x in ids])
    response = torch.tensor(
        [[int(p <= t < len(x)) for t in range(length)] for x, p in zip(ids, plen)]
    )
    return input_ids, attention, response


def _naive_logprobs(model, input_ids, attention, response):
    logits = model(input_ids=input_ids, attention_mask=attention).logits.float()  # (B, L, V)
    lp = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None])[..., 0]  # (B, L-1)
    return torch.cat([torch.zeros_like(lp[:, :1]), lp], 1) * response


def test_response_logprobs_match_full_logits_and_have_zero_outside_response(tok):
    torch.manual_seed(0)
    model = load_causal_lm(ModelConfig(config=TINY), tok)
    ids, attn, resp = _batch(tok)
    ours = response_logprobs(model, ids, attn, resp)
    torch.testing.assert_close(ours, _naive_logprobs(model, ids, attn, resp), atol=1e-5, rtol=1e-5)
    assert (ours[resp == 0] == 0).all() and (ours[resp == 1] < 0).all()
    ours.sum().backward()  # gradients flow into the lm_head and the backbone
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0


def test_left_and_right_padding_give_the_same_logprobs(tok):
    torch.manual_seed(0)
    model = load_causal_lm(ModelConfig(config=TINY), tok).eval()
    ids, attn, resp = _batch(tok)
    shift = attn.shape[1] - attn.sum(1)  # (B,) pad count, moved to the left
    roll = lambda x: torch.stack([torch.roll(r, int(s)) for r, s in zip(x, shift)])
    right = response_logprobs(model, ids, attn, resp)
    left = response_logprobs(model, roll(ids), roll(attn), roll(resp))
    torch.testing.assert_close(right.sum(1), left.sum(1), atol=1e-5, rtol=1e-5)


def test_source_errors_are_one_line(tok, tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        load_causal_lm(ModelConfig(), tok)
    with pytest.raises(ValueError, match="exactly one of"):
        load_causal_lm(ModelConfig(name_or_path="x/y", config=TINY), tok)
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "nope")), tok)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="model_type"):
        load_causal_lm(ModelConfig(config={"hidden_size": 8}), tok)


def test_export_round_trip_and_frozen_copy(tok, tmp_path):
    torch.manual_seed(0)
    model = load_causal_lm(ModelConfig(config=TINY), tok)
    ref = frozen_copy(model)
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    path = export_pretrained(model, tok, tmp_path / "export")
    assert not (tmp_path / "export.tmp").exists()
    loaded = AutoModelForCausalLM.from_pretrained(path)
    ids, attn, resp = _batch(tok)
    with torch.no_grad():
        torch.testing.assert_close(
            response_logprobs(loaded, ids, attn, resp),
            response_logprobs(model.eval(), ids, attn, resp),
        )


def _entries(directory, token: str) -> dict[str, object]:
    """What an export declares for ``token`` ("pad" or "eos"): tokenizer_config.json's
    ``<token>_token`` and the ``<token>_token_id`` of config.json and generation_config.json (None
    where absent or null)."""
    read = lambda name: json.loads((directory / name).read_text())
    return {
        "tokenizer": read("tokenizer_config.json").get(f"{token}_token"),
        "config": read("config.json").get(f"{token}_token_id"),
        "generation": read("generation_config.json").get(f"{token}_token_id"),
    }


def test_export_declares_no_pad_token_when_the_tokenizer_had_none(tmp_path):
    source = get_tokenizer("arithmetic")
    source.pad_token = None  # a tokenizer like Llama's or GPT-2's: EOS but no pad token
    source.save_pretrained(tmp_path / "tok")
    tok = RLHFDataModule(tokenizer=str(tmp_path / "tok")).tokenizer  # pads with EOS in training
    model = load_causal_lm(ModelConfig(config=TINY), tok)
    assert tok.pad_token_id == model.config.pad_token_id == tok.eos_token_id == 2
    assert pad_is_borrowed_eos(tok)
    path = export_pretrained(model, tok, tmp_path / "export")
    assert _entries(path, "pad") == {"tokenizer": None, "config": None, "generation": None}
    assert _entries(path, "eos") == {"tokenizer": "<eos>", "config": 2, "generation": 2}
    reloaded = AutoTokenizer.from_pretrained(path)
    assert reloaded.pad_token is None and reloaded.eos_token == "<eos>"
    # the training run keeps padding with EOS after the export
    assert tok.pad_token_id == model.config.pad_token_id == 2
    assert model.generation_config.pad_token_id == 2


def test_export_keeps_a_real_pad_token(tok, tmp_path):
    model = load_causal_lm(ModelConfig(config=TINY), tok)  # the built-in tokenizer: <pad> is id 0
    assert not pad_is_borrowed_eos(tok)
    path = export_pretrained(model, tok, tmp_path / "export")
    assert _entries(path, "pad") == {"tokenizer": "<pad>", "config": 0, "generation": 0}


def test_export_keeps_eos_as_pad_when_the_tokenizer_itself_declared_it(tmp_path):
    source = get_tokenizer("arithmetic")
    source.pad_token = source.eos_token  # saved so: the source's own choice, kept as it is
    source.save_pretrained(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert not pad_is_borrowed_eos(tok)
    path = export_pretrained(load_causal_lm(ModelConfig(config=TINY), tok), tok, tmp_path / "e")
    assert _entries(path, "pad") == {"tokenizer": "<eos>", "config": 2, "generation": 2}


def test_lora_trains_only_adapters_and_merges_on_export(tok, tmp_path):
    pytest.importorskip("peft", reason="LoRA needs peft (the `lora` extra)")
    torch.manual_seed(0)
    model = load_causal_lm(
        ModelConfig(config=TINY, lora=LoraConfig(r=4, alpha=8, dropout=0.0)), tok
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for n, p in model.named_parameters():  # make the adapter non-trivial
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    ids, attn, resp = _batch(tok)
    with torch.no_grad():
        adapted = response_logprobs(model.eval(), ids, attn, resp)
        with model.disable_adapter():
            base = response_logprobs(model, ids, attn, resp)
    assert not torch.allclose(adapted, base), "the adapter should change the log-probs"
    merged = AutoModelForCausalLM.from_pretrained(
        export_pretrained(model, tok, tmp_path / "merged")
    )
    with torch.no_grad():
        torch.testing.assert_close(
            response_logprobs(merged, ids, attn, resp), adapted, atol=1e-5, rtol=1e-5
        )


def test_gradient_checkpointing_gives_the_same_gradients(tok):
    ids, attn, resp = _batch(tok)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = load_causal_lm(ModelConfig(config=TINY, gradient_checkpointing=ckpt), tok).train()
        response_logprobs(model, ids, attn, resp).sum().backward()
        grads.append(model.get_input_embeddings().weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
