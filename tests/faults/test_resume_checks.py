"""``fit --ckpt_path`` through the CLI's ``main``: changed model/algorithm/data settings are
refused in one line listing the keys, run-control settings may change, a damaged checkpoint is
one line naming it, and a damaged ``last.ckpt`` falls back to the newest loadable checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lightning_rlhf.cli import main
from tests.algorithms.e2e import CONFIGS, TINY

pytestmark = pytest.mark.slow


def _argv(root: Path, *extra: str, config: str = "sft/arithmetic.yaml", steps: int = 4) -> list:
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"save_last": True, "every_n_train_steps": 2, "save_top_k": -1,
                                "enable_version_counter": False}}]  # copies: keep last.ckpt
    return [
        "fit", "--config", str(CONFIGS / config),
        "--model.init_args.policy", json.dumps({"config": TINY}),
        "--trainer.default_root_dir", str(root), "--trainer.max_steps", str(steps),
        "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_model_summary", "false", "--trainer.callbacks", json.dumps(callbacks),
        "--data.num_train", "64", "--data.num_val", "0", "--data.batch_size", "8",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step tiny SFT run with checkpoints at steps 2 and 4 and last.ckpt."""
    root = tmp_path_factory.mktemp("sft_run")
    main(_argv(root))
    return root


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run."""
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def _refused(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "config", "keys"),
    [
        (("--model.init_args.lr", "1e-3"), "sft/arithmetic.yaml", ["model.lr"]),
        (
            ("--model.init_args.policy", json.dumps({"config": {**TINY, "hidden_size": 48}})),
            "sft/arithmetic.yaml",
            ["model.policy.config.hidden_size"],
        ),
        (("--data.max_prompt_length", "12"), "sft/arithmetic.yaml", ["data.max_prompt_length"]),
        ((), "dpo/arithmetic.yaml", ["model.class_path", "data.format", "model.beta"]),
    ],
    ids=["lr", "model-size", "data", "other-algorithm"],
)
def test_changed_settings_are_refused_naming_the_keys(run, capsys, extra, config, keys):
    last = run / "checkpoints" / "last.ckpt"
    line = _refused(capsys, _argv(run, *extra, "--ckpt_path", str(last), config=config, steps=6))
    assert "cannot resume" in line and str(last) in line, line
    for key in keys:
        assert f"{key} (checkpoint" in line, (key, line)
    if config == "sft/arithmetic.yaml":
        assert line.count("(checkpoint") == len(keys), line


def test_run_control_may_change_and_history_is_kept(run):
    rows_before = (run / "metrics.csv").read_text().splitlines()
    argv = _argv(run, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), steps=6)
    argv += ["--trainer.log_every_n_steps", "2", "--data.num_workers", "0"]
    main(argv)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6
    rows_after = (run / "metrics.csv").read_text().splitlines()
    assert rows_after[: len(rows_before)] == rows_before and len(rows_after) > len(rows_before)


def test_damaged_last_falls_back_to_the_newest_loadable(run):
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")  # as a kill mid-write on NFS leaves it
    expected = r"last.ckpt is empty.*resuming from epoch=0-step=4.ckpt"
    with pytest.warns(UserWarning, match=expected):
        main(_argv(run, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), steps=6))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


@pytest.mark.parametrize("kind", ["random bytes", "directory", "truncated"])
def test_damaged_checkpoint_is_one_line_naming_it(run, capsys, kind):
    path = run / "checkpoints" / "epoch=0-step=4.ckpt"
    if kind == "random bytes":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        path.unlink()
        path.mkdir()
    line = _refused(capsys, _argv(run, "--ckpt_path", str(path), steps=6))
    assert str(path) in line and "Traceback" not in line, line
