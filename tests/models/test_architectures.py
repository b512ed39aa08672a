"""The architecture matrix: tiny random models of every family in ``architectures.py``.

For each: response log-probs, entropy and the lm_head gradient equal those of the model's own
logits within fp32 rounding, on the fused (no-logits) path (known soft-caps and scales included);
then one short PPO fit (policy + critic) and one short DPO fit, two optimiser steps each, in which
every trainable parameter moves. The whole matrix takes about 70 s on 2 busy cores.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lightning_rlhf.algorithms.dpo import DPO
from lightning_rlhf.algorithms.ppo import PPO
from lightning_rlhf.data.module import RLHFDataModule
from lightning_rlhf.data.tasks import get_tokenizer
from lightning_rlhf.models import ModelConfig, load_causal_lm, response_logprobs
from lightning_rlhf.models.scoring import fused_head
from tests.algorithms.e2e import ParamSnapshot
from tests.models.architectures import ARCHITECTURES, BASE
from tests.models.test_loading import _batch

NAMES = list(ARCHITECTURES)


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("arithmetic")


@pytest.fixture(scope="module")
def no_pad_llama(tok, tmp_path_factory) -> Path:
    """A tiny Llama saved with ``pad_token_id = None``, as many hub checkpoints are."""
    config = AutoConfig.for_model("llama", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=None, **BASE)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert model.config.pad_token_id is None
    path = tmp_path_factory.mktemp("no_pad_llama")
    model.save_pretrained(path)
    return path


def _model_config(name: str, request: pytest.FixtureRequest) -> ModelConfig:
    if name == "llama_no_pad":
        return ModelConfig(name_or_path=str(request.getfixturevalue("no_pad_llama")))
    return ModelConfig(config=ARCHITECTURES[name])


def _own(model, ids, attn, mask):
    """Log-probs and entropy (B, L-1) from the model's own full logits, in fp32."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()  # (B, L-1, V)
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, ids[:, 1:, None])[..., 0]  # (B, L-1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp[mask], ent[mask]


@pytest.mark.parametrize("name", NAMES)
def test_logprobs_entropy_and_grads_match_the_models_own_logits(name, tok, request):
    torch.manual_seed(0)
    model = load_causal_lm(_model_config(name, request), tok).eval()
    ids, attn, resp = _batch(tok)
    mask = resp.bool()[:, 1:].clone()  # (B, L-1): positions predicting response tokens
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="response_logprobs")  # no fallback
        lp, ent = response_logprobs(model, ids, attn, resp, return_entropy=True)
    assert fused_head(model) is not None, f"{name} should keep the fused path"
    head = model.get_output_embeddings().weight
    (g_ours,) = torch.autograd.grad((lp * resp).sum() + ent.sum(), head)
    want_lp, want_ent = _own(model, ids, attn, mask)
    (g_own,) = torch.autograd.grad(want_lp.sum() + want_ent.sum(), head)
    torch.testing.assert_close(lp[:, 1:][mask], want_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent[:, 1:][mask], want_ent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_ours, g_own, atol=1e-5, rtol=1e-4)
    assert (lp[:, 1:][~mask] == 0).all() and (lp[:, 0] == 0).all()


def _fit(module: L.LightningModule, data_format: str, root: Path) -> tuple[L.Trainer, list]:
    """Two optimiser steps on 8 built-in arithmetic rows, no validation, logger or checkpoint;
    returns the trainer and the trainable parameters that did not change."""
    L.seed_everything(0, verbose=False)
    data = RLHFDataModule(format=data_format, num_train=8, num_val=4, max_prompt_length=16,
                          max_response_length=8, batch_size=4)
    snapshot = ParamSnapshot()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=2, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[snapshot], default_root_dir=root,
    )
    trainer.fit(module, datamodule=data)
    return trainer, snapshot.unchanged(module)


class _RandomHeadPPO(PPO):
    """PPO whose fresh critic head is drawn at random instead of zero, so that the critic's body
    gets full-size gradients from the first step and two steps move every one of its parameters
    (behind the shipped zero head, the body's first update is scaled by ~1e-3 head weights:
    below float32 resolution for falcon_h1's ``dt_bias``, whose gradient is ~1e-13 here)."""

    def build_frozen(self) -> None:
        super().build_frozen()
        head = self.critic.head
        torch.nn.init.normal_(head.weight, std=head.in_features**-0.5)


@pytest.mark.parametrize("name", NAMES)
def test_ppo_and_dpo_fit(name, request, tmp_path):
    cfg = _model_config(name, request)
    ppo = _RandomHeadPPO(cfg, reward="tests.algorithms.online_helpers:char_code_sum",
                         max_new_tokens=4, ppo_epochs=2, minibatch_size=None, lr=1e-3,
                         critic_lr=1e-3)
    trainer, unchanged = _fit(ppo, "prompt", tmp_path / "ppo")
    metrics = trainer.callback_metrics
    assert trainer.global_step == 2 and unchanged == [], unchanged
    assert torch.isfinite(metrics["train/value_loss"]) and torch.isfinite(metrics["train/loss"])
    dpo = DPO(cfg, lr=1e-3)
    trainer, unchanged = _fit(dpo, "pair", tmp_path / "dpo")
    assert trainer.global_step == 2 and unchanged == [], unchanged
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
