"""Multi-node rehearsed on one machine: two ``torchrun`` launches (node ranks 0 and 1, two
processes each, c10d rendezvous on 127.0.0.1) run MA-PPO under FSDP2 through
``python -m lightning_rlhf fit`` with ``configs/trainer/multinode.yaml`` (``num_nodes 2``,
``devices 2``, gloo on CPU): it trains, writes a distributed checkpoint (one shard per rank),
resumes from it on a new pair of launches and exports the gathered policy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.algorithms.e2e import CONFIGS, TINY
from tests.distributed.helpers import free_port
from tests.distributed.test_fsdp2 import _check_export, _losses

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="gloo process groups on Linux only"),
]
ROOT = Path(__file__).resolve().parents[2]


def _launch(root: Path, steps: int, *extra: str) -> None:
    """Both nodes' ``torchrun`` launches at once; fails with node 0's last lines."""
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "every_n_train_steps": 2}},
        {"class_path": "tests.distributed.helpers.LossRecorder"},
        {"class_path": "lightning_rlhf.callbacks.HFExport"},
    ]  # fmt: skip
    fit = [
        "-m", "lightning_rlhf", "fit",
        "--config", str(CONFIGS / "mappo" / "arithmetic.yaml"),
        "--config", str(CONFIGS / "trainer" / "multinode.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.num_nodes", "2",
        "--trainer.precision", "32-true", "--trainer.default_root_dir", str(root),
        "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks", json.dumps(callbacks),
        "--data.num_train", "64", "--data.batch_size", "4",
        "--model.init_args.policy", json.dumps({"name_or_path": None, "config": TINY}),
        "--model.init_args.reward", "tests.algorithms.online_helpers:digit_share",
        "--model.init_args.max_new_tokens", "6", *extra,
    ]  # fmt: skip
    port, torchrun = free_port(), shutil.which("torchrun") or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    nodes = [
        subprocess.Popen(
            [torchrun, "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"rehearsal{port}",
             "--node-rank", str(node), *fit],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for node in (0, 1)
    ]
    logs = [node.communicate(timeout=400)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), logs[0][-3000:]


def test_mappo_on_two_nodes_of_two_processes_trains_checkpoints_resumes_exports(tmp_path):
    _launch(tmp_path, steps=4)
    for rank in range(4):  # every rank of both nodes trained (ppo_epochs 2: 2 steps a rollout)
        assert sorted(_losses(tmp_path, rank)) == [2, 4], rank
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.glob("*.distcp")) == [f"__{r}_0.distcp" for r in range(4)]
    _launch(tmp_path, 6, "--ckpt_path", str(last))
    assert all(sorted(_losses(tmp_path, rank)) == [6] for rank in range(4))  # from step 4
    _check_export(tmp_path)
