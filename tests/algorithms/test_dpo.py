"""DPO end to end through the CLI (fit, resume, every weight changed, the loss variants),
the module's options reaching dpo_loss, identical pairs skipped."""

from __future__ import annotations

import pytest
import torch

from lightning_rlhf.algorithms.dpo import DPO, distinct_pairs, sequence_logps
from lightning_rlhf.losses.preference import dpo_loss
from lightning_rlhf.models import ModelConfig
from tests.algorithms.e2e import run_fit, tiny_policy

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
    "extra",
    [
        ("--model.init_args.reference_free", "true"),
        ("--model.init_args.loss_type", "ipo", "--model.init_args.length_average", "true"),
        ("--model.init_args.loss_type", "simpo", "--model.init_args.sft_weight", "0.5"),
    ],
)
def test_dpo_options_train(tmp_path, sft_export, extra):
    cli, snap = run_fit(CONFIG, tmp_path, *_policy(sft_export), *extra, steps=2)
    assert snap.unchanged(cli.model) == []
    assert (cli.model.reference is None) == (extra[1] in ("true", "simpo"))
    assert ("train/sft_loss" in cli.trainer.callback_metrics) == ("0.5" in extra)


OPTIONS = [
    {"loss_type": "robust", "label_smoothing": 0.1, "sft_weight": 0.3},
    {"loss_type": "ipo", "length_average": True},
    {"loss_type": "simpo", "simpo_gamma": 0.4, "beta": 2.0},
    {"loss_type": "hinge"},
]


def test_dpo_module_passes_its_options_and_token_counts(tmp_path, sft_export):
    """The module's loss is dpo_loss on its summed log-likelihoods, with the options and each
    response's token count (the response mask's ones: the prompt is never empty)."""
    cli, _ = run_fit(CONFIG, tmp_path, *_policy(sft_export), steps=1)
    module = cli.model
    batch = next(iter(cli.datamodule.train_dataloader()))
    with torch.no_grad():
        logps = sequence_logps(module.policy, batch)
        ref = sequence_logps(module.reference, batch)
    lengths = batch["response_mask"].sum(-1)  # (B, 2)
    assert (lengths > 0).all() and not (lengths[:, 0] == lengths[:, 1]).all()
    for options in OPTIONS:
        module.hparams.update(options)
        loss, stats = module.compute_loss(batch)
        expected, _ = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1],
                               chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1],
                               **options)  # fmt: skip
        torch.testing.assert_close(loss.detach(), expected)
        assert ("sft_loss" in stats) == ("sft_weight" in options)
        module.hparams.update(sft_weight=0.0, length_average=False, beta=0.1,
                              label_smoothing=0.0)  # fmt: skip


def test_dpo_refuses_an_unknown_loss_type(sft_export):
    with pytest.raises(ValueError, match="DPO: unknown loss_type 'kto'"):
        DPO(ModelConfig(name_or_path=str(sft_export)), loss_type="kto")


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
        run_fit(CONFIG, tmp_path, *tiny_policy(), "--data.format", "response", steps=1)
