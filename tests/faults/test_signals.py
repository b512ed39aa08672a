"""Preemption signals in-process: SIGUSR1 and a first Ctrl-C (SIGINT) finish the step, save
``last.ckpt`` and exit with 128 + signum; under SLURM with Lightning's auto-requeue, SIGUSR1 still
makes Lightning save its ``hpc_ckpt`` and call ``scontrol requeue`` (a fake one on ``PATH``)."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest
import torch

from tests.algorithms.e2e import run_fit, tiny_policy

pytestmark = pytest.mark.slow


def _callbacks(step: int, signum: int) -> str:
    return json.dumps([
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "every_n_train_steps": 100}},
        {"class_path": "tests.test_resume.SignalAt", "init_args": {"step": step, "signum": signum}},
    ])  # fmt: skip


def _stop(root: Path, signum: int, step: int = 2) -> int:
    """Fit with ``signum`` sent at ``step``; the exit code."""
    with pytest.raises(SystemExit) as stopped:
        run_fit("sft/arithmetic.yaml", root, *tiny_policy(), "--trainer.callbacks",
                _callbacks(step, signum), steps=50)  # fmt: skip
    return stopped.value.code


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGINT], ids=["SIGUSR1", "SIGINT"])
def test_signal_saves_and_exits_non_zero(tmp_path, signum):
    assert _stop(tmp_path, int(signum)) == 128 + signum
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handlers restored"


def test_slurm_auto_requeue_still_works(tmp_path, monkeypatch):
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "rlhf",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "SLURM_NODELIST": "localhost"}  # fmt: skip
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "run"
    assert _stop(root, int(signal.SIGUSR1)) == 128 + signal.SIGUSR1
    assert calls.read_text().split() == ["requeue", "4242"], "Lightning requeued the job"
    assert list(root.glob("hpc_ckpt_*.ckpt")), "Lightning's own requeue checkpoint"
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
