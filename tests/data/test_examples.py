"""The sample data under examples/ (one JSONL per format) loads through the data module, every
character known to the built-in tokenizer, and examples/tiny_sft.yaml trains on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_rlhf.cli import RLHFCLI
from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.data.formats import FORMAT_FIELDS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: the token ids of each format's batch and their shape past the batch dimension's
IDS = {"prompt": ("prompt_input_ids", 1), "response": ("input_ids", 1),
       "pair": ("input_ids", 2), "ranked": ("input_ids", 2)}  # fmt: skip
ROWS = {"prompt": 16, "response": 32, "pair": 16, "ranked": 16}


@pytest.mark.parametrize("fmt", list(FORMAT_FIELDS))
def test_sample_loads_through_the_data_module(fmt):
    dm = RLHFDataModule(dataset=str(EXAMPLES / "data" / f"{fmt}.jsonl"), format=fmt,
                        batch_size=4, val_split=0.25, max_prompt_length=48,
                        max_response_length=24)  # fmt: skip
    dm.setup("fit")
    batches = list(dm.train_dataloader()) + list(dm.val_dataloader())
    key, extra_dims = IDS[fmt]
    assert sum(len(b["prompt"]) for b in batches) == ROWS[fmt], "every row of the file"
    unk = dm.tokenizer.unk_token_id
    for batch in batches:
        ids = batch[key]
        assert ids.dim() == 1 + extra_dims and ids.shape[0] == len(batch["prompt"])
        assert not ids.eq(unk).any(), f"{fmt}: a character outside the built-in vocabulary"
    if fmt == "ranked":
        assert batches[0]["rewards"].shape[1] == 4


def test_the_tiny_config_trains_on_the_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(EXAMPLES.parent)  # the config names examples/data/... from the repo root
    cli = RLHFCLI(args=["--config", str(EXAMPLES / "tiny_sft.yaml"),
                        "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3",
                        "--trainer.enable_progress_bar", "false"], run=False)  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 3
    assert (tmp_path / "export" / "config.json").exists()
