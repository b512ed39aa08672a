"""PRO end to end through the CLI (fit, resume, every weight changed), bad ranked input."""

from __future__ import annotations

import pytest
import torch

from tests.algorithms.e2e import run_fit, tiny_policy

CONFIG = "pro/arithmetic.yaml"


def _policy(sft_export) -> tuple[str, str]:
    return ("--model.init_args.policy.name_or_path", str(sft_export))


def test_pro_fits_and_resumes(tmp_path, sft_export):
    cli, snap = run_fit(CONFIG, tmp_path, *_policy(sft_export), "--data.ranked_k", "3", steps=4)
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 4
    assert snap.unchanged(cli.model) == [], "every trainable parameter should have been updated"
    assert torch.isfinite(metrics["train/loss"]) and "train/pair_accuracy" in metrics

    last = tmp_path / "checkpoints" / "last.ckpt"
    resumed, snap2 = run_fit(
        CONFIG, tmp_path, *_policy(sft_export), "--data.ranked_k", "3", steps=6, ckpt_path=last
    )
    assert snap2.start_step == 4 and resumed.trainer.global_step == 6
    assert snap2.unchanged(resumed.model) == []


def test_pro_bad_batches(tmp_path, sft_export):
    cli, _ = run_fit(CONFIG, tmp_path, *_policy(sft_export), steps=1)
    module = cli.model
    batch = next(iter(cli.datamodule.train_dataloader()))
    one = {
        k: v[:, :1] if k in ("input_ids", "attention_mask", "response_mask") else v
        for k, v in batch.items()
    }
    with pytest.raises(ValueError, match=r"PRO needs ranked lists of >= 2 responses"):
        module.compute_loss(one)
    del batch["rewards"]
    with pytest.raises(ValueError, match="PRO needs a reward per candidate"):
        module.compute_loss(batch)


def test_ranked_k_of_one_is_refused(tmp_path):
    with pytest.raises(Exception, match="ranked_k must be >= 2, got 1"):
        run_fit(CONFIG, tmp_path, *tiny_policy(), "--data.ranked_k", "1", steps=1)
