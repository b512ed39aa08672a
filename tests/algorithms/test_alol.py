"""A-LoL end to end through the CLI: value head + cache, priority sampling, resume, bad input."""

from __future__ import annotations

import json

import datasets
import lightning as L
import pytest
import torch

from lightning_rlhf.data.tasks import arithmetic
from lightning_rlhf.offline.alol import checked_rewards
from tests.algorithms.e2e import run_fit

CONFIG = "alol/arithmetic.yaml"
FAST = ("--model.init_args.value_head", json.dumps({"epochs": 3, "batch_size": 8}))


class BatchIndices(L.Callback):
    """Records the row indices of every training batch."""

    def __init__(self) -> None:
        self.indices: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.indices.append(batch["index"].tolist())


def _fit(tmp_path, sft_export, *extra, steps=4, ckpt_path=None):
    policy = ("--model.init_args.policy.name_or_path", str(sft_export))
    return run_fit(CONFIG, tmp_path, *policy, *FAST, *extra, steps=steps, ckpt_path=ckpt_path)


def _recorded(cli) -> list[int]:
    (recorder,) = [c for c in cli.trainer.callbacks if isinstance(c, BatchIndices)]
    return [i for batch in recorder.indices for i in batch]


RECORD = ("--trainer.callbacks+=tests.algorithms.test_alol.BatchIndices",)


MID_CKPT = (
    "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
    "--trainer.callbacks.every_n_train_steps=2",
    "--trainer.callbacks.save_top_k=-1",
    "--trainer.callbacks.filename=mid-{step}",
)


@pytest.mark.parametrize("variant", ["a_lol", "a_lol_seq"])
def test_alol_fits_resumes_and_continues_the_stream(tmp_path, sft_export, variant):
    args = ("--model.init_args.variant", variant, *RECORD)
    cli, snap = _fit(tmp_path, sft_export, *args, *MID_CKPT)
    module, table = cli.model, cli.model.table
    assert cli.trainer.global_step == 4
    assert snap.unchanged(module) == [], "every trainable parameter should have been updated"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert "train/importance_weight" in cli.trainer.callback_metrics
    assert (tmp_path / "alol_cache.pt").exists() and not table.cache_hit
    stats = table.stats
    rewards = torch.tensor(cli.datamodule.train_dataset["reward"])  # the data's own R
    advantages = rewards - table.values  # A = R - V(x), recomputed here
    assert stats["rows"] == 64 and stats["adv_positive"] == int((advantages > 0).sum()) > 0
    torch.testing.assert_close(table.priorities, advantages.clamp(min=0), atol=1e-6, rtol=0)
    assert not module.value_head.training
    assert not any(p.requires_grad for p in module.value_head.parameters())

    # the precomputed reference log-probs equal a live reference forward on the same rows
    batch = next(iter(cli.datamodule.train_dataloader()))
    cached = module.batch_ref_logprobs(batch)
    table.ref_logprobs = None
    torch.testing.assert_close(cached, module.batch_ref_logprobs(batch), atol=1e-5, rtol=1e-5)

    # rows trained on: the priority stream in order, never a row with A <= 0
    stream = cli.trainer.train_dataloader.sampler.draws(0).tolist()
    assert _recorded(cli) == stream[:32]
    positive = set((table.priorities > 0).nonzero()[:, 0].tolist())
    assert set(stream) <= positive

    last = tmp_path / "checkpoints" / "last.ckpt"
    resumed, snap2 = _fit(tmp_path, sft_export, *args, steps=6, ckpt_path=last)
    assert snap2.start_step == 4 and resumed.trainer.global_step == 6
    assert resumed.model.table.cache_hit, "the value head / advantages cache should be reused"
    torch.testing.assert_close(resumed.model.table.values, table.values)
    assert snap2.unchanged(resumed.model) == []

    # resuming mid-epoch (from step 2) trains on exactly the rows of steps 3-4 of the first run
    mid, _ = _fit(
        tmp_path, sft_export, *args, steps=4, ckpt_path=tmp_path / "checkpoints/mid-step=2.ckpt"
    )
    assert _recorded(mid) == stream[16:32]

    # other tokenised rows (here: shorter responses) must not reuse the cached V(x) and
    # reference log-probs of these ones
    recut, _ = _fit(tmp_path, sft_export, *args, "--data.max_response_length", "4", steps=1)
    assert not recut.model.table.cache_hit, "a cache made for other tokenised rows was reused"


@pytest.mark.parametrize(
    "variant, extra",
    [
        ("a_lol_ref_free", ()),
        ("a_lol_kl", ("--model.init_args.kl_beta", "0.1")),
        ("r_lol", ("--model.init_args.ref_logprobs", "live")),
        ("wbc", ()),
        ("r_gold", ()),
        ("nll", ()),
    ],
)
def test_other_variants_train(tmp_path, sft_export, variant, extra):
    cli, snap = _fit(tmp_path, sft_export, "--model.init_args.variant", variant, *extra, steps=2)
    module, table = cli.model, cli.model.table
    assert snap.unchanged(module) == [] and torch.isfinite(
        cli.trainer.callback_metrics["train/loss"]
    )
    assert (table.values is not None) == variant.startswith("a_lol")
    assert (table.ref_logprobs is not None) == (variant == "a_lol_kl")  # r_lol: live reference
    if variant in ("wbc", "r_gold", "r_lol"):  # P(i) ∝ R_i
        torch.testing.assert_close(
            table.priorities, torch.tensor(cli.datamodule.train_dataset["reward"])
        )
    if variant == "nll":
        assert (table.priorities == 1).all()


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_all_advantages_nonpositive_is_an_error(tmp_path, sft_export):
    rows = [{"prompt": f"{i}+1=", "response": str(i + 1), "reward": 0.0} for i in range(40)]
    data = _write_jsonl(tmp_path / "zero.jsonl", rows)
    with pytest.raises(ValueError, match=r"nothing to train on: 0 of \d+ rows .* negative\)"):
        # V regresses the rows' own rewards (all 0) but sigmoid(.) > 0, so every A < 0
        _fit(
            tmp_path,
            sft_export,
            "--data.dataset",
            data,
            "--data.val_split",
            "0.25",
            "--model.init_args.reward",
            "null",
            steps=1,
        )


def test_missing_rewards_are_scored_or_refused(tmp_path, sft_export):
    rows = [{"prompt": f"{i}+1=", "response": str(i + 1 + i % 2)} for i in range(20)]
    data = _write_jsonl(tmp_path / "unscored.jsonl", rows)
    args = ("--data.dataset", data, "--data.val_split", "0.25", "--model.init_args.variant", "wbc")
    with pytest.raises(ValueError, match=r"ALoL needs a reward per training row"):
        _fit(tmp_path, sft_export, *args, "--model.init_args.reward", "null", steps=1)
    # with a scorer (the default arithmetic reward) the rows are scored instead
    cli, _ = _fit(tmp_path / "scored", sft_export, *args, steps=1)
    ds = cli.datamodule.train_dataset
    expected = arithmetic.reward(ds["prompt"], ds["response"])
    assert 0 < sum(expected) < len(expected)
    torch.testing.assert_close(cli.model.table.rewards, torch.tensor(expected))


def test_non_finite_reward_names_the_row():
    ds = datasets.Dataset.from_dict({"reward": [0.5, 1.0, float("nan")]})
    with pytest.raises(ValueError, match=r"training row 2 has reward nan"):
        checked_rewards(ds)
