"""Speed and peak memory of ``macro_gae`` and ``ppo_clip_loss`` vs the naive PyTorch baselines.

``run(device, quick)`` returns one dict per table row (``python -m kernels.bench`` prints them).
Baselines ("naive"): for macro_gae the textbook reverse loop ``for t in reversed(range(T))`` over
batched (B,) slices that large frameworks run (token-level GAE; at n = 5 it is the cost of the
token-level GAE the macro version replaces, not the same result); for ppo_clip_loss an eager
fp32 torch surrogate (``kernels.reference.ppo_clip_loss_ref``). Peak memory as in
``kernels.bench_logprob``: CUDA allocator peak growth, or on CPU the peak-RSS growth of a fresh
subprocess over its RSS once the inputs exist.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from kernels.macro_gae import macro_gae
from kernels.ratio import ppo_clip_loss
from kernels.reference import gae_reverse_loop_ref, ppo_clip_loss_ref


def _cases(device: str, quick: bool) -> list[dict]:
    """The shapes to time: macro_gae at n = 1 and n = 5, ppo_clip_loss at N = B*T tokens."""
    B, T = (32, 256) if quick else (256, 1024)
    pB, pT = (64, 1024) if quick else (1024, 1024)  # ppo: N = 64K (quick) or 1M tokens
    dtype = "bf16" if device.startswith("cuda") else "fp32"
    return [
        {"op": "macro_gae", "B": B, "T": T, "n": 1, "dtype": "fp32"},
        {"op": "macro_gae", "B": B, "T": T, "n": 5, "dtype": "fp32"},
        {"op": "ppo_clip_loss", "B": pB, "T": pT, "n": 1, "dtype": dtype},
    ]


def _inputs(case: dict, device: str) -> list[torch.Tensor]:
    """Seeded inputs: right padding with variable lengths; logprobs require grad for ppo."""
    g = torch.Generator().manual_seed(0)
    B, T = case["B"], case["T"]
    lengths = torch.randint(T // 2, T + 1, (B, 1), generator=g)
    mask = torch.arange(T)[None] < lengths  # (B, T)
    if case["op"] == "macro_gae":
        ids = torch.arange(T).expand(B, T) // case["n"]  # (B, T) fixed n-grams
        ids = torch.where(torch.arange(T)[None] == lengths - 1, ids + 1, ids)  # last token alone
        r, v = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
        return [x.to(device) for x in (r, v, mask, ids)]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[case["dtype"]]
    lp = -torch.rand(B, T, generator=g) * 3
    old = lp + 0.2 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, T, generator=g)
    lp = lp.to(device, dtype).requires_grad_(True)
    return [lp, old.to(device, dtype), adv.to(device), mask.to(device)]


def _impls(op: str, device: str) -> dict[str, Callable]:
    """name -> callable(*inputs) returning a tensor to compare; "naive" first. Triton only on
    CUDA (the CPU interpreter is a test tool, far too slow to time)."""
    if op == "macro_gae":
        impls = {"naive": lambda r, v, m, s: gae_reverse_loop_ref(r, v, m, gamma=1.0, lam=0.95)[0],
                 "ours_torch": lambda *a: macro_gae(*a, backend="torch")[0]}
        if device.startswith("cuda"):
            impls["ours_triton"] = lambda *a: macro_gae(*a, backend="triton")[0]
        return impls
    impls = {"naive": lambda *a: ppo_clip_loss_ref(*a)[0],
             "ours_torch": lambda *a: ppo_clip_loss(*a, backend="torch")[0]}
    if device.startswith("cuda"):
        impls["ours_triton"] = lambda *a: ppo_clip_loss(*a, backend="triton")[0]
    return impls


def _step(fn: Callable, inputs: list[torch.Tensor]) -> torch.Tensor:
    """macro_gae: the forward (it has no backward); ppo_clip_loss: forward + backward."""
    if not inputs[0].requires_grad:
        return fn(*inputs)
    inputs[0].grad = None
    loss = fn(*inputs)
    loss.backward()
    return inputs[0].grad.float()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_ms(fn: Callable, inputs: list[torch.Tensor], device: str, reps: int) -> float:
    _step(fn, inputs)  # warm-up (Triton compilation, allocator)
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        _step(fn, inputs)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _cuda_peak_mb(fn: Callable, inputs: list[torch.Tensor]) -> float:
    inputs[0].grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _step(fn, inputs)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _cpu_peak_mb_child(case: dict, impl: str) -> float:
    """In a fresh process: peak RSS growth (MiB) over the RSS with the inputs allocated."""
    fn = _impls(case["op"], "cpu")[impl]
    _step(fn, _inputs(dict(case, B=2, T=16), "cpu"))  # load code paths on a tiny shape
    inputs = _inputs(case, "cpu")
    base = _rss_mb()
    _step(fn, inputs)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base


def _cpu_peak_mb(case: dict, impl: str) -> float:
    cmd = [sys.executable, "-m", "kernels.bench_ratio", json.dumps({"case": case, "impl": impl})]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _row(case: dict, impl: str, ms: float, mem: float, err: float | None) -> dict:
    shape = f"B={case['B']} T={case['T']}" + (f" n={case['n']}" if case["op"] == "macro_gae"
                                               else f" N={case['B'] * case['T']}")
    return {"op": case["op"], "impl": impl, "shape": shape, "dtype": case["dtype"],
            "fwd_bwd_ms": round(ms, 2), "peak_mem_mb": round(mem, 1),
            "max_abs_err_vs_naive": None if err is None else float(f"{err:.3g}"), "bw_frac": None}


def _add_ratios(rows: list[dict]) -> list[dict]:
    """time_vs_naive, mem_vs_naive: each row over the naive row of the same op and shape."""
    naive = {(r["op"], r["shape"]): r for r in rows if r["impl"] == "naive"}
    for r in rows:
        n = naive[(r["op"], r["shape"])]
        r["time_vs_naive"] = round(r["fwd_bwd_ms"] / n["fwd_bwd_ms"], 3)
        r["mem_vs_naive"] = (round(r["peak_mem_mb"] / n["peak_mem_mb"], 3)
                             if n["peak_mem_mb"] > 0 else None)
    return rows


def run(device: str, quick: bool) -> list[dict]:
    """Benchmark macro_gae and ppo_clip_loss on ``device`` ("cpu" or "cuda[:i]").

    Columns: op, impl, shape, dtype, fwd_bwd_ms (median; macro_gae has no backward, so its
    forward), peak_mem_mb, max_abs_err_vs_naive (advantages, or d loss / d logprobs; None at
    n = 5 where the baseline computes token-level GAE), bw_frac (None), time_vs_naive,
    mem_vs_naive.
    """
    reps = 3 if quick else 5
    rows = []
    for case in _cases(device, quick):
        inputs = _inputs(case, device)
        expected = None
        for impl, fn in _impls(case["op"], device).items():
            out = _step(fn, inputs)
            expected = out if expected is None else expected  # "naive" runs first
            same_quantity = case["op"] == "ppo_clip_loss" or case["n"] == 1
            err = (out - expected).abs().max().item() if same_quantity else None
            ms = _time_ms(fn, inputs, device, reps)
            mem = _cuda_peak_mb(fn, inputs) if device.startswith("cuda") else _cpu_peak_mb(case,
                                                                                          impl)
            rows.append(_row(case, impl, ms, mem, err))
        del inputs
    return _add_ratios(rows)


if __name__ == "__main__":  # child process of _cpu_peak_mb
    spec = json.loads(sys.argv[1])
    print(_cpu_peak_mb_child(spec["case"], spec["impl"]))
