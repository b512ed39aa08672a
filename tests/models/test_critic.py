"""Heads sized from the hidden states a backbone really returns: an OPT-350m-shaped model (its
decoder projects to ``word_embed_proj_dim`` = 16, not ``hidden_size`` = 32)."""

from __future__ import annotations

import pytest
import torch

from lightning_rlhf.data.tasks import get_tokenizer
from lightning_rlhf.models import ModelConfig, load_causal_lm, load_reward_model, response_logprobs
from lightning_rlhf.models.critic import ValueModel, critic_from_policy, output_width
from lightning_rlhf.models.scoring import sequence_scores
from lightning_rlhf.models.value_head import ValueHead, prompt_hidden_states
from tests.models.test_loading import _batch, _naive_logprobs

OPT_PROJ = {"model_type": "opt", "hidden_size": 32, "word_embed_proj_dim": 16,
            "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "max_position_embeddings": 64, "do_layer_norm_before": False}


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("arithmetic")


def test_critic_value_and_reward_heads_fit_projected_hidden_states(tok):
    torch.manual_seed(0)
    cfg = ModelConfig(config=OPT_PROJ)
    policy = load_causal_lm(cfg, tok)
    ids, attn, resp = _batch(tok)
    critic = critic_from_policy(policy, cfg, tok)
    assert output_width(critic.backbone) == 16 and critic.head.in_features == 16
    values = critic(ids, attn)
    assert values.shape == ids.shape and values.dtype == torch.float32
    values.sum().backward()
    assert critic.head.weight.grad.abs().sum() > 0
    assert isinstance(critic, ValueModel) and critic.training  # the width probe left train mode
    hidden = prompt_hidden_states(policy, ids, attn)  # A-LoL's V(x) reads these
    assert ValueHead(hidden.shape[-1], num_heads=2)(hidden, attn).shape == (ids.shape[0],)
    rm = load_reward_model(cfg, tok)
    assert sequence_scores(rm, ids, attn).shape == (ids.shape[0],)
    policy.eval()  # OPT has dropout: compare deterministic forwards
    torch.testing.assert_close(response_logprobs(policy, ids, attn, resp),
                               _naive_logprobs(policy, ids, attn, resp), atol=1e-5, rtol=1e-5)
