"""The GPU check's CPU-testable parts: the no-CUDA exit, the peak table, the summary table, the
parsers, ``make gpu-check``, and its FSDP2 SFT step run on a tiny model on CPU (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels._bench_util import device_peaks
from kernels.bench import to_csv
from lightning_rlhf.gpu_check import SFT_MARK, parse_pytest, read_bench_csv, summary_rows

ROOT = Path(__file__).resolve().parents[1]


def _python(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the check would run everything")
def test_without_cuda_it_prints_one_line_and_exits_0():
    out = _python("-m", "lightning_rlhf.gpu_check", timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines() == [
        "gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing run"
    ]


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("NVIDIA H200", (4.8e12, 989e12)),
        ("NVIDIA H100 80GB HBM3", (3.35e12, 989e12)),
        ("NVIDIA H100 PCIe", (2.0e12, 756e12)),
        ("NVIDIA A100-SXM4-80GB", (2.039e12, 312e12)),
        ("NVIDIA A100-SXM4-40GB", (1.555e12, 312e12)),
        ("Tesla T4", None),
    ],
)
def test_peak_table_lookup(name, want):
    assert device_peaks(name) == want


def test_summary_rows_divide_by_the_peaks():
    bench = [
        {"op": "sequence_logprobs", "impl": "ours_triton", "shape": "N=16384 V=128256",
         "dtype": "bf16", "fwd_bwd_ms": 4.2, "peak_mem_mb": 10.0, "gb_s": 3015.0},
        {"op": "linear_logprobs", "impl": "ours_triton", "shape": "N=16384 V=128256 H=4096",
         "dtype": "bf16", "fwd_bwd_ms": 120.0, "peak_mem_mb": 900.0, "tflop_s": 494.5},
    ]
    sft = {"params": 5e8, "tokens": 8192, "step_s": 0.1, "first_step_s": 9.0,
           "losses": [12.0, 11.9]}
    rows = summary_rows((3.35e12, 989e12), ("9 passed", 30.0), bench, sft, 60.0)
    assert [r["fraction_of_peak"] for r in rows[1:]] == [0.9, 0.5, 0.248]
    assert rows[0] == {"check": "pytest -m gpu tests/kernels", "result": "9 passed",
                       "seconds": 30.0}
    failed = summary_rows(None, ("not run", 0.0), "failed (rc 1): boom", "failed (rc 2): x", 1.0)
    assert [r["result"] for r in failed] == ["not run", "failed (rc 1): boom", "failed (rc 2): x"]


def test_parsers(tmp_path):
    text = "....s\n=== 12 passed, 3 skipped, 40 deselected in 41.20s ===\n"
    assert parse_pytest(text) == "12 passed, 3 skipped"
    assert parse_pytest("ERROR: file not found: tests/x\n") == "ERROR: file not found: tests/x"
    rows = [{"op": "linear_logprobs", "impl": "naive", "fwd_bwd_ms": 1.5, "bw_frac": None}]
    (tmp_path / "b.csv").write_text(to_csv(rows))
    assert read_bench_csv(tmp_path / "b.csv") == rows


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_target_runs_the_script_without_installing():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    cmd = ["make", "--no-print-directory", "-n", "gpu-check"]  # CI runs this suite under make
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0  # one command, whatever PYTHON is, and no install step first
    assert out.stdout.split()[1:] == ["-m", "lightning_rlhf.gpu_check"]


def test_sft_step_runs_under_fsdp2_on_cpu_without_datasets_or_jsonargparse():
    code = ("import sys; sys.modules['datasets'] = sys.modules['jsonargparse'] = None; "
            "from lightning_rlhf.gpu_check import main; main(['--sft-step', '--tiny-cpu'])")
    out = _python("-c", code, timeout=300)
    marks = [ln for ln in out.stdout.splitlines() if ln.startswith(SFT_MARK)]
    assert out.returncode == 0 and marks, out.stderr[-3000:]
    result = json.loads(marks[0][len(SFT_MARK):])
    assert result["tokens"] == 32 and 20_000 < result["params"] < 40_000
    assert len(result["losses"]) == 3 and all(4.0 < x < 5.5 for x in result["losses"])  # ~ln 101
    assert "response_logprobs" not in out.stderr  # the fused path held (no probe fallback)
