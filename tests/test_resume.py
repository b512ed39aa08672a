"""Exact resume: a run killed with SIGKILL mid-epoch resumes from its last checkpoint and logs
the same per-step losses as the uninterrupted run (CPU, fixed seed: tolerance 1e-6, in practice
bit-exact); and Lightning's checkpoint writes are atomic (no half-written file is ever left)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.cloud_io import _atomic_save

from tests.algorithms.e2e import CONFIGS, TINY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


class KillAt(L.Callback):
    """SIGKILLs its own process once ``global_step`` reaches ``step`` (no clean shutdown)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *_) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _fit(root: Path, config: str, *extra: str, steps: int, kill_at: int | None = None):
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "every_n_train_steps": 3}},
        {"class_path": "tests.distributed.helpers.LossRecorder"},
    ]  # fmt: skip
    if kill_at is not None:
        callbacks.append({"class_path": "tests.test_resume.KillAt", "init_args": {"step": kill_at}})
    args = [
        sys.executable, "-m", "lightning_rlhf", "fit", "--config", str(CONFIGS / config),
        "--trainer.default_root_dir", str(root), "--trainer.max_steps", str(steps),
        "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks", json.dumps(callbacks),
        "--data.num_train", "64", "--data.num_val", "0", "--data.batch_size", "8",
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _losses(root: Path) -> dict[int, float]:
    raw = json.loads((root / "losses_rank0.json").read_text())
    return {int(k): v for k, v in raw.items()}


def test_sft_sigkill_mid_epoch_resumes_exactly(tmp_path):
    tiny = ["--model.init_args.policy", json.dumps({"config": TINY})]
    full, killed = tmp_path / "full", tmp_path / "killed"
    out = _fit(full, "sft/arithmetic.yaml", *tiny, steps=7)
    assert out.returncode == 0, out.stderr[-3000:]
    out = _fit(killed, "sft/arithmetic.yaml", *tiny, steps=7, kill_at=5)
    assert out.returncode == -signal.SIGKILL, "the run should have been killed"
    last = killed / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 3, "mid-epoch (8 batches)"
    out = _fit(killed, "sft/arithmetic.yaml", *tiny, "--ckpt_path", str(last), steps=7)
    assert out.returncode == 0, out.stderr[-3000:]
    expected, resumed = _losses(full), _losses(killed)
    assert sorted(resumed) == [4, 5, 6, 7]
    for step in resumed:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("crash while serialising")


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """Lightning's ``_atomic_save`` (used by ``ModelCheckpoint`` through ``TorchCheckpointIO``)
    serialises to memory and writes inside an fsspec transaction: a crash while serialising or
    while writing leaves the previous checkpoint intact and no partial file."""
    path = tmp_path / "last.ckpt"
    _atomic_save({"step": 1}, path)
    with pytest.raises(RuntimeError, match="serialising"):
        _atomic_save({"step": 2, "bad": _Unpicklable()}, path)
    assert torch.load(path)["step"] == 1

    import fsspec.implementations.local as local

    def crash(self, *args, **kwargs):
        raise OSError("disk gone mid-write")

    monkeypatch.setattr(local.LocalFileOpener, "commit", crash)
    with pytest.raises(OSError, match="mid-write"):
        _atomic_save({"step": 3}, path)
    assert torch.load(path)["step"] == 1, "the old checkpoint survives a failed write"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"] or all(
        not p.name.endswith(".ckpt") or p == path for p in tmp_path.iterdir()
    )
