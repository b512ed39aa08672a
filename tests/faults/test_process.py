"""Real ``python -m lightning_rlhf fit`` processes under faults, run directory on a tmpfs (another
filesystem than ``$TMPDIR``): SIGKILL in the middle of a ``last.ckpt`` rewrite and at a random
moment, SIGTERM from outside, and a disk that fills up. After each, every checkpoint left is
loadable and a resume runs to the end."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_rlhf.io import TMP_PREFIX
from tests.algorithms.e2e import CONFIGS, TINY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _checkpoint(**init_args) -> dict:
    """A ModelCheckpoint every 2 steps keeping ``last.ckpt``."""
    return {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"save_last": True, "every_n_train_steps": 2, **init_args}}  # fmt: skip


def _args(root: Path, steps: int, callbacks: list[dict], *extra: str) -> list[str]:
    if not any(c["class_path"].endswith("ModelCheckpoint") for c in callbacks):
        callbacks = [_checkpoint(), *callbacks]
    return [
        sys.executable, "-m", "lightning_rlhf", "fit",
        "--config", str(CONFIGS / "sft" / "arithmetic.yaml"),
        "--model.init_args.policy", json.dumps({"config": TINY}),
        "--trainer.default_root_dir", str(root), "--trainer.max_steps", str(steps),
        "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.callbacks", json.dumps(callbacks),
        "--data.num_train", "64", "--data.num_val", "0", "--data.batch_size", "8",
        *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(root: Path, steps: int, callbacks: list[dict], *extra: str) -> subprocess.CompletedProcess:
    args = _args(root, steps, callbacks, *extra)
    return subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)


def _start(root: Path, steps: int, callbacks: list[dict]) -> subprocess.Popen:
    args = _args(root, steps, callbacks)
    return subprocess.Popen(
        args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _step(path: Path) -> int:
    return torch.load(path, weights_only=True, map_location="cpu")["global_step"]


def _resume_to_the_end(root: Path, steps: int) -> None:
    """Resume with the README's command; the run finishes and no temporary is left."""
    out = _run(root, steps, [], "--ckpt_path", str(root / "checkpoints" / "last.ckpt"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert _step(root / "checkpoints" / "last.ckpt") == steps
    leftovers = [p.name for p in root.rglob(f"{TMP_PREFIX}*")]
    assert not leftovers, leftovers


def test_sigkill_during_the_last_ckpt_rewrite_keeps_the_previous_one(tmp_path, tmpfs):
    root = tmpfs("256m") / "run"
    marker = tmp_path / "in_write"
    stall = {"class_path": "tests.faults.helpers.StallLastWrite",
             "init_args": {"step": 4, "marker": str(marker)}}  # fmt: skip
    proc = _start(root, 6, [stall])
    _wait_for(marker, proc)
    proc.kill()
    proc.wait(timeout=60)
    last = root / "checkpoints" / "last.ckpt"
    assert _step(last) == 2, "the step-2 last.ckpt survives the interrupted rewrite"
    assert list((root / "checkpoints").glob(f"{TMP_PREFIX}last.ckpt.*")), "half-written temp"
    _resume_to_the_end(root, 6)


def test_sigkill_at_a_random_moment_then_resume(tmp_path, tmpfs):
    root = tmpfs("256m") / "run"
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 10_000))
    delay = random.Random(seed).uniform(0.0, 1.0)
    print(f"FAULT_SEED={seed}: SIGKILL {delay:.2f} s after the first checkpoint")
    proc = _start(root, 2000, [])
    _wait_for(root / "checkpoints" / "last.ckpt", proc)
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before the kill"
    proc.kill()
    proc.wait(timeout=60)
    steps = [_step(path) for path in (root / "checkpoints").glob("*.ckpt")]
    assert steps and all(step % 2 == 0 for step in steps), steps  # complete and loadable
    _resume_to_the_end(root, max(steps) + 2)


def test_sigterm_saves_and_exits_143(tmp_path, tmpfs):
    root = tmpfs("256m") / "run"
    proc = _start(root, 2000, [])
    _wait_for(root / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    step = _step(root / "checkpoints" / "last.ckpt")
    assert 2 <= step < 2000
    assert f"global step {step}" in stderr, "the save is reported"
    print([line for line in stderr.splitlines() if "SIGTERM" in line or "saved" in line])


def test_disk_full_leaves_no_half_checkpoint_and_the_earlier_one_intact(tmp_path, tmpfs):
    disk = tmpfs("2m")
    fill = {"class_path": "tests.faults.helpers.FillDisk",
            "init_args": {"step": 3, "directory": str(disk)}}  # fmt: skip
    checkpoint = _checkpoint(dirpath=str(disk / "ckpts"), filename="{step}")
    out = _run(tmp_path / "run", 4, [checkpoint, fill])
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    print(lines)
    assert len(lines) == 1 and "No space left" in lines[0], out.stderr[-2000:]
    assert "ckpt" in lines[0] and "previous file" in lines[0], lines[0]
    names = sorted(p.name for p in (disk / "ckpts").iterdir())
    assert names == ["last.ckpt", "step=2.ckpt"], names
    assert _step(disk / "ckpts" / "last.ckpt") == 2
    assert _step(disk / "ckpts" / "step=2.ckpt") == 2


def test_sigterm_under_ddp_stops_every_rank_at_one_step(tmp_path):
    """SIGTERM to the launching process of a 2-process DDP run (Lightning forwards it to the
    other rank, which may be at another point of its step): both ranks save together and exit."""
    root = tmp_path / "run"
    ddp = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    args = _args(root, 2000, [], *ddp)
    proc = subprocess.Popen(
        args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(root / "checkpoints" / "last.ckpt", proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert 2 <= _step(root / "checkpoints" / "last.ckpt") < 2000
