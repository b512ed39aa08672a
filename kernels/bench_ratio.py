"""Speed and peak memory of ``macro_gae`` and ``ppo_clip_loss`` vs the naive PyTorch baselines.

``run(device, quick)`` returns one dict per table row (``python -m kernels.bench`` prints them).
Baselines ("naive"): for macro_gae the textbook reverse loop ``for t in reversed(range(T))`` over
batched (B,) slices that large frameworks run (token-level GAE; at n = 5 it is the cost of the
token-level GAE the macro version replaces, not the same result); for ppo_clip_loss an eager
fp32 torch surrogate (``kernels.reference.ppo_clip_loss_ref``). Peak memory
(``kernels._bench_util``): CUDA allocator peak growth, or on CPU the peak-RSS growth of a fresh
subprocess over its RSS once the inputs exist.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from kernels._bench_util import add_ratios, probe_main, row, rss_peak_growth_mb, time_and_peak
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
        impls = {
            "naive": lambda r, v, m, s: gae_reverse_loop_ref(r, v, m, gamma=1.0, lam=0.95)[0],
            "ours_torch": lambda *a: macro_gae(*a, backend="torch")[0],
        }
        if device.startswith("cuda"):
            impls["ours_triton"] = lambda *a: macro_gae(*a, backend="triton")[0]
        return impls
    impls = {
        "naive": lambda *a: ppo_clip_loss_ref(*a)[0],
        "ours_torch": lambda *a: ppo_clip_loss(*a, backend="torch")[0],
    }
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


def _probe(case: dict, impl: str) -> float:
    """CPU peak-RSS growth (MiB) of one ``_step``; run in a fresh process by run()."""
    fn = _impls(case["op"], "cpu")[impl]
    _step(fn, _inputs(dict(case, B=2, T=16), "cpu"))  # load code paths on a tiny shape
    inputs = _inputs(case, "cpu")
    return rss_peak_growth_mb(partial(_step, fn, inputs))


def _shape(case: dict) -> str:
    tail = f" n={case['n']}" if case["op"] == "macro_gae" else f" N={case['B'] * case['T']}"
    return f"B={case['B']} T={case['T']}" + tail


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
            call = partial(_step, fn, inputs)
            ms, mem = time_and_peak("kernels.bench_ratio", case, impl, call, inputs, device, reps)
            rows.append(row(case, impl, _shape(case), ms, mem, err))
        del inputs
    return add_ratios(rows)


if __name__ == "__main__":  # child process of kernels._bench_util.cpu_peak_mb
    probe_main(_probe)
