"""FSDP2 on CPU: 2 processes (gloo) under ``FSDP2Strategy`` train, write a distributed checkpoint,
resume from it, export, and follow the loss trajectory of one process with the same global batch.

Tolerance: the two ranks' mean loss equals the single-process loss at step 0 to 1e-5 (same
weights, the same 16 rows split 8 + 8 by the distributed sampler; the token-mean of each half
averages to the token-mean of the whole up to the halves' token counts, equal here up to ~1e-3);
later steps to 2e-2 relative, since FSDP averages per-rank token-mean gradients rather than one
global token mean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.algorithms.e2e import CONFIGS, TINY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _fit(root: Path, config: str, *extra: str, devices: int, batch: int, steps: int) -> None:
    """``python -m lightning_rlhf fit`` in a subprocess (Lightning spawns the second rank)."""
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "every_n_train_steps": 2}},
        {"class_path": "tests.distributed.helpers.LossRecorder"},
        {"class_path": "lightning_rlhf.callbacks.HFExport"},
    ]  # fmt: skip
    args = [
        sys.executable, "-m", "lightning_rlhf", "fit",
        "--config", str(CONFIGS / config),
        "--trainer.accelerator", "cpu", "--trainer.devices", str(devices),
        "--trainer.precision", "32-true",
        "--trainer.default_root_dir", str(root), "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", str(steps), "--trainer.limit_val_batches", "1",
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks", json.dumps(callbacks),
        "--data.num_train", "64", "--data.num_val", "16", "--data.batch_size", str(batch),
        "--model.init_args.policy", json.dumps({"config": TINY}),
        *extra,
    ]  # fmt: skip
    if devices > 1:
        args[6:6] = ["--config", str(CONFIGS / "trainer" / "fsdp2.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    rank0 = "\n".join(line for line in out.stderr.splitlines() if not line.startswith("[rank1]"))
    assert out.returncode == 0, rank0[-3000:]


def _losses(root: Path, rank: int) -> dict[int, float]:
    return {
        int(k): v for k, v in json.loads((root / f"losses_rank{rank}.json").read_text()).items()
    }


def test_sft_fsdp2_two_processes_match_one_and_resume(tmp_path):
    single, dist = tmp_path / "single", tmp_path / "fsdp2"
    _fit(single, "sft/arithmetic.yaml", devices=1, batch=16, steps=4)
    _fit(dist, "sft/arithmetic.yaml", devices=2, batch=8, steps=4)
    one, r0, r1 = _losses(single, 0), _losses(dist, 0), _losses(dist, 1)
    assert sorted(one) == sorted(r0) == sorted(r1) == [1, 2, 3, 4]
    mean = {s: (r0[s] + r1[s]) / 2 for s in r0}
    assert r0[1] != r1[1], "the ranks should see different halves of the batch"
    assert abs(mean[1] - one[1]) < 1e-3 * one[1], (mean, one)
    for step in (2, 3, 4):
        assert abs(mean[step] - one[step]) < 2e-2 * one[step], (step, mean, one)

    # a distributed checkpoint: a folder with one shard per rank (+ metadata)
    last = dist / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / ".metadata").exists()
    _fit(dist, "sft/arithmetic.yaml", "--ckpt_path", str(last), devices=2, batch=8, steps=6)
    resumed = _losses(dist, 0)
    assert sorted(resumed) == [5, 6], "training should continue from step 4"

    # the gathered export loads with transformers and has every weight of the model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(dist / "export")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
