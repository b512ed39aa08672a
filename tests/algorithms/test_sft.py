"""SFT end to end through the CLI: trains, checkpoints, resumes, changes every weight, exports."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_rlhf.models import response_logprobs
from tests.algorithms.e2e import run_fit, tiny_policy


def test_sft_fits_resumes_and_exports(tmp_path):
    cli, snap = run_fit("sft/arithmetic.yaml", tmp_path, *tiny_policy(), steps=4)
    assert cli.trainer.global_step == 4
    assert snap.unchanged(cli.model) == [], "every trainable parameter should have been updated"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert (
        last.exists() and (tmp_path / "metrics.csv").exists() and (tmp_path / "eval.json").exists()
    )

    # the export loads back with plain transformers and scores exactly like the trained policy
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    batch = next(iter(cli.datamodule.val_dataloader()))
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    with torch.no_grad():
        torch.testing.assert_close(
            response_logprobs(exported, *args), response_logprobs(cli.model.policy.eval(), *args)
        )

    resumed, snap2 = run_fit(
        "sft/arithmetic.yaml", tmp_path, *tiny_policy(), steps=6, ckpt_path=last
    )
    assert snap2.start_step == 4, "training should resume from the checkpoint's step"
    assert resumed.trainer.global_step == 6
    assert snap2.unchanged(resumed.model) == []


def test_sft_refuses_pair_data(tmp_path):
    with pytest.raises(
        ValueError, match=r"SFT needs data.format='response' but the data module has format='pair'"
    ):
        run_fit("sft/arithmetic.yaml", tmp_path, *tiny_policy(), "--data.format", "pair", steps=1)


def test_sequences_longer_than_the_model_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"= 72 exceeds the model's context of 64 tokens"):
        too_long = ["--data.max_prompt_length", "64"]
        run_fit("sft/arithmetic.yaml", tmp_path, *tiny_policy(), *too_long, steps=1)
