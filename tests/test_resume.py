"""Exact resume: a run stopped mid-epoch (SIGKILL of a real subprocess, or SIGTERM handled by the
``Preemption`` callback in-process) and resumed from ``last.ckpt`` logs the same per-step
training and rollout metrics as the uninterrupted run (CPU, fixed seed: tolerance 1e-6, in
practice bit-exact) for SFT, DPO, A-LoL, PPO, MA-PPO, P3O and GRPO; and a resume keeps the
earlier rows of ``metrics.csv``."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.algorithms.e2e import CONFIGS, TINY, run_fit, tiny_policy

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


class KillAt(L.Callback):
    """SIGKILLs its own process once ``global_step`` reaches ``step`` (no clean shutdown)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *_) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAt(L.Callback):
    """Sends ``signum`` to its own process once, when ``global_step`` reaches ``step``."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM)) -> None:
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer: L.Trainer, *_) -> None:
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class MetricsRecorder(L.Callback):
    """Merges every step's ``train/*`` and ``rollout/*`` metrics into
    ``<default_root_dir>/step_metrics.json`` (a resumed run adds its steps to the file)."""

    def on_train_batch_end(self, trainer: L.Trainer, *_) -> None:
        path = Path(trainer.default_root_dir) / "step_metrics.json"
        recorded = json.loads(path.read_text()) if path.exists() else {}
        metrics = trainer.callback_metrics
        keys = [k for k in metrics if k.startswith(("train/", "rollout/"))]
        recorded[str(trainer.global_step)] = {k: float(metrics[k]) for k in keys}
        path.write_text(json.dumps(recorded))


def _callbacks(stop_at: int | None = None) -> str:
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "every_n_train_steps": 100}},
        {"class_path": "tests.test_resume.MetricsRecorder"},
    ]  # fmt: skip
    if stop_at is not None:
        signal_at = {"class_path": "tests.test_resume.SignalAt", "init_args": {"step": stop_at}}
        callbacks.append(signal_at)
    return json.dumps(callbacks)


def _recorded(root: Path) -> dict[int, dict[str, float]]:
    raw = json.loads((root / "step_metrics.json").read_text())
    return {int(k): v for k, v in raw.items()}


def _online(*extra: str) -> list[str]:
    """A tiny from-scratch policy, 4 prompts a batch, 4 new tokens, two optimiser steps per
    rollout batch, a dense scorer."""
    return [
        *tiny_policy(),
        "--model.init_args.reward", "tests.algorithms.online_helpers:digit_share",
        "--model.init_args.max_new_tokens", "4",
        "--model.init_args.minibatch_size", "null",
        "--model.init_args.ppo_epochs", "2",
        "--data.batch_size", "4",
        *extra,
    ]  # fmt: skip


FAST_VALUE_HEAD = ("--model.init_args.value_head", json.dumps({"epochs": 2, "batch_size": 8}))
CASES = {
    "sft": ("sft/arithmetic.yaml", tiny_policy()),
    "dpo": ("dpo/arithmetic.yaml", tiny_policy()),
    "alol": ("alol/arithmetic.yaml", [*tiny_policy(), *FAST_VALUE_HEAD]),
    "ppo": ("ppo/arithmetic.yaml", _online()),
    "mappo": ("mappo/arithmetic.yaml", _online()),
    "p3o": ("p3o/arithmetic.yaml", _online()),
    "grpo": ("grpo/arithmetic.yaml", _online("--model.init_args.samples_per_prompt", "2")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_sigterm_and_resume_give_the_uninterrupted_metrics(tmp_path, name):
    """Uninterrupted 6 steps vs SIGTERM after step 3 (``Preemption`` saves ``last.ckpt`` and
    exits 143) + resume to 6: every per-step train/rollout metric matches."""
    config, extra = CASES[name]
    steps, stop = 6, 3
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_fit(config, full, *extra, "--trainer.callbacks", _callbacks(), steps=steps)
    with pytest.raises(SystemExit) as stopped:
        run_fit(config, cut, *extra, "--trainer.callbacks", _callbacks(stop), steps=steps)
    assert stopped.value.code == 128 + signal.SIGTERM
    last = cut / "checkpoints" / "last.ckpt"
    saved_step = torch.load(last, weights_only=True, map_location="cpu")["global_step"]
    assert stop <= saved_step < steps, "the checkpoint is the stopping step's"
    run_fit(config, cut, *extra, "--trainer.callbacks", _callbacks(), steps=steps, ckpt_path=last)
    expected, resumed = _recorded(full), _recorded(cut)
    assert sorted(resumed) == sorted(expected) and max(expected) == steps
    for step, metrics in expected.items():
        assert metrics, f"step {step}: nothing recorded"
        assert sorted(resumed[step]) == sorted(metrics), step
        for key, value in metrics.items():
            assert resumed[step][key] == pytest.approx(value, rel=1e-6, abs=1e-7), (step, key)


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


def _csv_steps(path: Path) -> list[int]:
    with open(path, newline="") as file:
        return [int(row["step"]) for row in csv.DictReader(file) if row.get("train/loss")]


def test_sft_sigkill_mid_epoch_resumes_exactly_and_keeps_history(tmp_path):
    """A real ``python -m lightning_rlhf fit`` killed with SIGKILL after step 5 (last.ckpt at 3)
    resumes with the README's command to the uninterrupted losses; ``metrics.csv`` keeps the
    killed attempt's rows."""
    tiny = ["--model.init_args.policy", json.dumps({"config": TINY})]
    full, killed = tmp_path / "full", tmp_path / "killed"
    out = _fit(full, "sft/arithmetic.yaml", *tiny, steps=7)
    assert out.returncode == 0, out.stderr[-3000:]
    out = _fit(killed, "sft/arithmetic.yaml", *tiny, steps=7, kill_at=5)
    assert out.returncode == -signal.SIGKILL, "the run should have been killed"
    last = killed / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3, "mid-epoch (8 batches)"
    before = _csv_steps(killed / "metrics.csv")
    assert before and max(before) >= 3, before
    out = _fit(killed, "sft/arithmetic.yaml", *tiny, "--ckpt_path", str(last), steps=7)
    assert out.returncode == 0, out.stderr[-3000:]
    expected, resumed = _losses(full), _losses(killed)
    assert sorted(resumed) == [4, 5, 6, 7]
    for step in resumed:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    after = _csv_steps(killed / "metrics.csv")
    assert after[: len(before)] == before, "the first attempt's rows survive the resume"
    assert max(after) >= 6


def test_fresh_run_in_a_used_directory_moves_old_metrics_aside(tmp_path):
    """Without ``--ckpt_path`` an existing ``metrics.csv`` is renamed, never deleted."""
    no_callbacks = ("--trainer.callbacks", "[]")
    for _ in range(2):
        run_fit("sft/arithmetic.yaml", tmp_path, *tiny_policy(), *no_callbacks, steps=2)
    assert _csv_steps(tmp_path / "metrics.prev1.csv") and _csv_steps(tmp_path / "metrics.csv")


def test_ddp_mid_epoch_resume_continues_each_ranks_order(tmp_path):
    """2 CPU processes (DDP, gloo), 4 batches a rank per epoch: stopped after step 3 and resumed,
    each rank's losses at steps 4-6 equal the uninterrupted run's (the distributed sampler skips
    the rows already seen instead of restarting the epoch)."""
    ddp = [
        "--model.init_args.policy", json.dumps({"config": TINY}),
        "--model.init_args.schedule", "constant",  # the 3-step run has the 6-step run's lr
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
    ]  # fmt: skip
    full, cut = tmp_path / "full", tmp_path / "cut"
    resume = ("--ckpt_path", str(cut / "checkpoints" / "last.ckpt"))
    for root, steps, extra in ((full, 6, ()), (cut, 3, ()), (cut, 6, resume)):
        out = _fit(root, "sft/arithmetic.yaml", *ddp, *extra, steps=steps)
        assert out.returncode == 0, out.stderr[-3000:]
    for rank in (0, 1):
        expected = json.loads((full / f"losses_rank{rank}.json").read_text())
        resumed = json.loads((cut / f"losses_rank{rank}.json").read_text())
        assert sorted(resumed) == ["4", "5", "6"], resumed
        for step in resumed:
            assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), (rank, step)
