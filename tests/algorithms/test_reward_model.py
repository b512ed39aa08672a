"""Reward model end to end through the CLI, initialised from an SFT export; export round trip."""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification

from lightning_rlhf.models import sequence_scores
from tests.algorithms.e2e import run_fit


def test_reward_model_fits_resumes_and_exports(tmp_path, sft_export):
    init = ["--model.init_args.policy.name_or_path", str(sft_export)]
    cli, snap = run_fit("reward_model/arithmetic.yaml", tmp_path, *init, steps=4)
    assert cli.trainer.global_step == 4
    assert snap.unchanged(cli.model) == []
    assert "val/accuracy" in cli.trainer.callback_metrics

    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export")
    batch = next(iter(cli.datamodule.val_dataloader()))
    ids, mask = batch["input_ids"][:, 0], batch["attention_mask"][:, 0]
    with torch.no_grad():
        torch.testing.assert_close(
            sequence_scores(exported, ids, mask),
            sequence_scores(cli.model.policy.eval(), ids, mask),
        )

    last = tmp_path / "checkpoints" / "last.ckpt"
    resumed, snap2 = run_fit(
        "reward_model/arithmetic.yaml", tmp_path, *init, steps=6, ckpt_path=last
    )
    assert snap2.start_step == 4 and resumed.trainer.global_step == 6


def test_score_is_read_at_last_real_token_for_either_padding(sft_export):
    from lightning_rlhf.data.tasks import get_tokenizer
    from lightning_rlhf.models import ModelConfig, load_reward_model

    tok = get_tokenizer("arithmetic")
    model = load_reward_model(ModelConfig(name_or_path=str(sft_export)), tok).eval()
    ids = torch.tensor([tok("12+3=15").input_ids + [tok.eos_token_id]])
    right = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    left = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask_r, mask_l = (
        (torch.arange(right.shape[1]) < ids.shape[1]).long()[None],
        (torch.arange(left.shape[1]) >= 3).long()[None],
    )
    with torch.no_grad():
        torch.testing.assert_close(
            sequence_scores(model, right, mask_r),
            sequence_scores(model, left, mask_l),
            atol=1e-5,
            rtol=1e-5,
        )
