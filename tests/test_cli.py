"""The command line ends an input error with its one-line message and exit code 2, and its default
progress bar shows no negative epoch total."""

from __future__ import annotations

import json
import sys

import pytest
from lightning.pytorch.callbacks import ProgressBar

from lightning_rlhf.callbacks import EpochProgressBar
from lightning_rlhf.cli import RLHFCLI, main
from tests.algorithms.e2e import CONFIGS, TINY


def _fit_args(tmp_path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(CONFIGS / "sft" / "arithmetic.yaml"),
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_steps", "1",
        "--model.init_args.policy", json.dumps({"name_or_path": None, "config": TINY}),
        *extra,
    ]  # fmt: skip


def test_missing_column_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LIGHTNING_RLHF_DEBUG", raising=False)
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"}\n')
    with pytest.raises(SystemExit) as exit_info:
        main(_fit_args(tmp_path, "--data.dataset", str(data)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    assert "DataError" in line and str(data) in line and "'response'" in line


def test_debug_env_gives_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_RLHF_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        missing = {"name_or_path": str(tmp_path / "no"), "config": None}
        main(_fit_args(tmp_path, "--model.init_args.policy", json.dumps(missing)))


def test_default_progress_bar_shows_no_negative_epoch_total(tmp_path, monkeypatch):
    pytest.importorskip("rich", reason="the Rich bar needs rich (Lightning uses TQDM without it)")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a terminal: a bar, not lines
    cli = RLHFCLI(args=_fit_args(tmp_path)[1:], run=False)  # bounded by max_steps alone
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, EpochProgressBar)
    bar.setup(cli.trainer, cli.model, "fit")
    # fit sets max_epochs to -1 when only max_steps bounds the run; Lightning's Rich bar then
    # reads "Epoch 3/-2"
    descriptions = {}
    for max_epochs in (None, -1, 4):
        cli.trainer.fit_loop.max_epochs = max_epochs
        descriptions[max_epochs] = bar._get_train_description(3)
    assert descriptions == {None: "Epoch 3   ", -1: "Epoch 3   ", 4: "Epoch 3/3 "}


@pytest.mark.parametrize("extra", [
    ("--trainer.enable_progress_bar", "false"),
    ("--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar",),
])  # fmt: skip
def test_a_disabled_or_configured_progress_bar_is_left_alone(tmp_path, extra):
    cli = RLHFCLI(args=_fit_args(tmp_path, *extra)[1:], run=False)
    bars = [c for c in cli.trainer.callbacks if isinstance(c, ProgressBar)]
    assert [type(b).__name__ for b in bars] == ([] if "false" in extra else ["TQDMProgressBar"])
