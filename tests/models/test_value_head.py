"""A-LoL value head: learns a known function of the prompt, ignores padding, keeps best epoch."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lightning_rlhf.data.tasks import get_tokenizer
from lightning_rlhf.models.value_head import ValueHead, fit_value_head, prompt_hidden_states
from lightning_rlhf.rl.rollout import left_pad_prompts


@pytest.fixture(scope="module")
def frozen_lm():
    """A random tiny Llama (frozen, eval) and the arithmetic tokenizer."""
    torch.manual_seed(0)
    tok = get_tokenizer("arithmetic")
    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )
    return AutoModelForCausalLM.from_config(cfg).eval().requires_grad_(False), tok


def _features(lm, tok, prompts, batch=64):
    feats = []
    for i in range(0, len(prompts), batch):
        ids, mask = left_pad_prompts(tok, prompts[i : i + batch])
        feats.append((prompt_hidden_states(lm, ids, mask), mask))
    return feats


def test_learns_a_digit_of_the_prompt(frozen_lm):
    """reward = (first digit of a) / 9: a known function the head must recover from the frozen
    LM's hidden states; the target's variance is ~0.085, the held-out MSE must be < 0.005."""
    lm, tok = frozen_lm
    rng = random.Random(0)
    prompts = [f"{rng.randint(10, 99)}+{rng.randint(0, 99)}=" for _ in range(640)]
    targets = torch.tensor([int(p[0]) / 9 for p in prompts])
    fit = fit_value_head(
        ValueHead(32, num_heads=4), _features(lm, tok, prompts), targets, epochs=40, lr=3e-3
    )
    assert fit.holdout_mse < 0.005, fit.history[-3:]
    assert fit.holdout_mse == min(h["holdout_mse"] for h in fit.history)
    assert fit.best_epoch == min(fit.history, key=lambda h: h["holdout_mse"])["epoch"]
    assert not fit.head.training and not any(p.requires_grad for p in fit.head.parameters())
    # fresh prompts (not seen in fitting) are predicted as well
    fresh = [f"{d}{rng.randint(0, 9)}+{rng.randint(10, 99)}=" for d in range(1, 10)]
    ((h, m),) = _features(lm, tok, fresh)
    pred = fit.head(h, m)
    torch.testing.assert_close(pred, torch.arange(1, 10) / 9, atol=0.1, rtol=0)


def test_output_range_and_padding_invariance(frozen_lm):
    lm, tok = frozen_lm
    head = ValueHead(32, num_heads=2, attn_dim=16, max_value=3.0).eval()
    ids, mask = left_pad_prompts(tok, ["1+2=", "37+48="])
    hidden = prompt_hidden_states(lm, ids, mask)  # (2, P, H)
    values = head(hidden, mask)
    assert values.shape == (2,) and values.dtype == torch.float32
    assert ((values > 0) & (values < 3.0)).all()
    # extra left padding with garbage hidden states changes nothing (key padding mask)
    garbage = torch.randn(2, 5, 32) * 100
    padded = head(
        torch.cat([garbage, hidden], 1), torch.cat([torch.zeros(2, 5, dtype=torch.long), mask], 1)
    )
    torch.testing.assert_close(padded, values)
    # the short prompt alone (no padding at all) gives the same value as in the padded batch
    alone_ids, alone_mask = left_pad_prompts(tok, ["1+2="])
    alone = head(prompt_hidden_states(lm, alone_ids, alone_mask), alone_mask)
    torch.testing.assert_close(alone, values[:1], atol=1e-5, rtol=1e-5)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="num_heads=3 must divide attn_dim=32"):
        ValueHead(32, num_heads=3)
    head = ValueHead(8, num_heads=2)
    with pytest.raises(ValueError, match="a prompt row has no real token"):
        head(torch.zeros(2, 3, 8), torch.tensor([[1, 1, 1], [0, 0, 0]]))
    with pytest.raises(ValueError, match="5 feature rows but 4 targets"):
        fit_value_head(head, [(torch.zeros(5, 3, 8), torch.ones(5, 3))], torch.zeros(4))
