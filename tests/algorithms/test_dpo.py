"""DPO end to end through the CLI (fit, resume, every weight changed), identical pairs skipped."""

from __future__ import annotations

import pytest
import torch

from lightning_rlhf.algorithms.dpo import distinct_pairs
from tests.algorithms.e2e import run_fit

CONFIG = "dpo/arithmetic.yaml"


def _policy(sft_export) -> tuple[str, str]:
    return ("--model.init_args.policy.name_or_path", str(sft_export))


def test_dpo_fits_and_resumes(tmp_path, sft_export):
    cli, snap = run_fit(CONFIG, tmp_path, *_policy(sft_export), steps=4)
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 4
    assert snap.unchanged(cli.model) == [], "every trainable parameter should have been updated"
    assert torch.isfinite(metrics["train/loss"]) and "train/margin" in metrics
    assert "val/accuracy" in metrics
    assert not any(p.requires_grad for p in cli.model.reference.parameters())

    last = tmp_path / "checkpoints" / "last.ckpt"
    assert not any(k.startswith("reference.") for k in torch.load(last)["state_dict"])
    resumed, snap2 = run_fit(CONFIG, tmp_path, *_policy(sft_export), steps=6, ckpt_path=last)
    assert snap2.start_step == 4 and resumed.trainer.global_step == 6
    assert snap2.unchanged(resumed.model) == []


@pytest.mark.parametrize(
    "extra", [("--model.init_args.reference_free", "true"), ("--model.init_args.loss_type", "ipo")]
)
def test_dpo_options_train(tmp_path, sft_export, extra):
    cli, snap = run_fit(CONFIG, tmp_path, *_policy(sft_export), *extra, steps=2)
    assert snap.unchanged(cli.model) == []
    assert (cli.model.reference is None) == (extra[1] == "true")


def test_identical_pairs_are_skipped_and_counted(tmp_path, sft_export):
    cli, _ = run_fit(CONFIG, tmp_path, *_policy(sft_export), steps=1)
    module = cli.model
    batch = next(iter(cli.datamodule.train_dataloader()))
    batch["input_ids"][0, 1] = batch["input_ids"][0, 0]  # row 0: rejected := chosen
    batch["attention_mask"][0, 1] = batch["attention_mask"][0, 0]
    assert distinct_pairs(batch).tolist() == [False] + [True] * 7
    loss, stats = module.compute_loss(batch)
    assert torch.isfinite(loss) and module.skipped_pairs == 1 == stats["skipped_pairs"]
    for key in ("input_ids", "attention_mask"):
        batch[key][:, 1] = batch[key][:, 0]
    assert module.compute_loss(batch) is None and module.skipped_pairs == 9


def test_dpo_refuses_response_data(tmp_path):
    with pytest.raises(ValueError, match=r"DPO needs data.format='pair'"):
        run_fit(CONFIG, tmp_path, "--data.format", "response", steps=1)
