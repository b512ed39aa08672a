"""Generation: left-padded prompts in, right-padded responses with an EOS-terminated mask out."""

from __future__ import annotations

import torch

from lightning_rlhf.data.tasks import get_tokenizer
from lightning_rlhf.models import ModelConfig, load_causal_lm
from lightning_rlhf.rl.rollout import generate, left_pad_prompts, response_mask_until_eos
from tests.algorithms.e2e import TINY


def test_mask_ends_at_first_eos_inclusive():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5], [2, 9, 9, 9, 9]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert torch.equal(response_mask_until_eos(ids, eos_token_id=2), expected)


def test_generate_greedy_matches_unbatched_and_restores_train_mode():
    tok = get_tokenizer("arithmetic")
    torch.manual_seed(0)
    model = load_causal_lm(ModelConfig(config=TINY), tok).train()
    prompts = ["1+2=", "34+56=", "7+8="]
    ids, mask = left_pad_prompts(tok, prompts)
    assert (mask[:, 0] == 0).any() and (mask[:, -1] == 1).all(), "prompts must be left-padded"
    batched = generate(model, tok, ids, mask, max_new_tokens=5)
    assert model.training, "generate must restore train mode"
    assert batched.response_ids.shape == batched.response_mask.shape == (3, 5)
    for i, prompt in enumerate(prompts):  # left padding must not change what is generated
        one_ids, one_mask = left_pad_prompts(tok, [prompt])
        single = generate(model, tok, one_ids, one_mask, max_new_tokens=5)
        n = int(single.response_mask.sum())
        assert torch.equal(single.response_ids[0, :n], batched.response_ids[i, :n])
        assert single.responses[0] == batched.responses[i]
    seq, attn, resp = batched.sequences()
    assert seq.shape == (3, ids.shape[1] + 5) and torch.equal(
        resp[:, ids.shape[1] :], batched.response_mask
    )
