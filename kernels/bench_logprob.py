"""Speed and peak memory of the log-prob ops vs naive PyTorch (and Liger / TRL when installed).

``run(device, quick)`` returns one dict per table row; ``python -m kernels.bench`` prints them.
Peak memory (``kernels._bench_util``): CUDA allocator peak growth, or on CPU the peak-RSS growth
of a fresh subprocess over its RSS once the inputs exist, during one forward + backward (it
includes the returned gradients, which every implementation must allocate).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from kernels._bench_util import (
    add_ratios,
    device_peaks,
    probe_main,
    row,
    rss_peak_growth_mb,
    time_and_peak,
)
from kernels.logprob import linear_logprobs, sequence_logprobs

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --- implementations: each maps the case's inputs to (B*T,) fp32 log-probs ----------------------


def _naive_seq(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax over an fp32 upcast of all the logits, then gather. logits (N, V)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)


def _naive_linear(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Full (N, V) logits, then the naive log-softmax + gather."""
    return _naive_seq(h @ w.t(), targets)  # (N, V) logits


def _peers(op: str) -> dict[str, Callable]:
    """Optional peer implementations, only where their packages import."""
    peers: dict[str, Callable] = {}
    if op == "sequence_logprobs":
        try:
            from trl.trainer.utils import selective_log_softmax
        except Exception:  # noqa: BLE001 - any import failure means "not installed"
            pass
        else:
            peers["trl_selective_log_softmax"] = lambda x, t: selective_log_softmax(x, t).float()
    else:
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        except Exception:  # noqa: BLE001
            pass
        else:
            peers["liger_flce"] = lambda h, w, t: (
                -liger_fused_linear_cross_entropy(h, w, t, reduction="none").float()
            )
    return peers


def _impls(op: str, device: str) -> dict[str, Callable]:
    """name -> callable(*inputs) for one op; Triton only on CUDA (the CPU interpreter is a test
    tool, far too slow to time)."""
    base = {
        "sequence_logprobs": (_naive_seq, sequence_logprobs),
        "linear_logprobs": (_naive_linear, linear_logprobs),
    }[op]
    impls = {"naive": base[0], "ours_torch": lambda *a: base[1](*a, backend="torch")}
    if device.startswith("cuda"):
        impls["ours_triton"] = lambda *a: base[1](*a, backend="triton")
        impls.update(_peers(op))
    return impls


# --- cases ---------------------------------------------------------------------------------------


def _cases(device: str, quick: bool, shape: tuple[int, int, int, str] | None = None) -> list[dict]:
    """(op, N, V, H, dtype) rows to measure on this device; ``shape`` = (N, V, H, dtype) measures
    both ops at that one size instead."""
    if shape is not None:
        n, v, h, d = shape
        seq, lin = [(n, v, d)], [(n, v, h, d)]
    elif device.startswith("cuda"):
        seq = [(4096, 32000, "bf16")] if quick else [(4096, 32000, "bf16"), (16384, 128256, "bf16")]
        lin = [(4096, 32000, 1024, "bf16")] if quick else [(8192, 128256, 4096, "bf16")]
    else:
        seq = [(1024, 32000, "fp32")] if quick else [(4096, 32000, "fp32")]
        lin = [(1024, 32000, 512, "fp32")] if quick else [(4096, 32000, 512, "fp32")]
    rows = [{"op": "sequence_logprobs", "N": n, "V": v, "H": None, "dtype": d} for n, v, d in seq]
    return rows + [
        {"op": "linear_logprobs", "N": n, "V": v, "H": h, "dtype": d} for n, v, h, d in lin
    ]


def _inputs(case: dict, device: str) -> list[torch.Tensor]:
    """Seeded inputs (requires_grad where differentiable), made in place on ``device`` so that
    creating them never holds more memory than they occupy (the CPU peak-RSS baseline)."""
    gen = torch.Generator(device).manual_seed(0)
    N, V, H, dtype = case["N"], case["V"], case["H"], _DTYPES[case["dtype"]]

    def randn(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype).mul_(scale)

    targets = torch.randint(0, V, (N,), generator=gen, device=device)
    if case["op"] == "sequence_logprobs":
        return [randn(N, V, scale=2.0).requires_grad_(True), targets]
    return [
        randn(N, H, scale=1.0).requires_grad_(True),
        randn(V, H, scale=H**-0.5).requires_grad_(True),
        targets,
    ]


def _fwd_bwd(fn: Callable, inputs: list[torch.Tensor]) -> torch.Tensor:
    """One forward + backward of sum(logp * c) with a fixed cotangent; returns logp detached."""
    for x in inputs:
        x.grad = None
    logp = fn(*inputs)
    cot = torch.linspace(-1, 1, logp.numel(), device=logp.device)
    (logp * cot).sum().backward()
    return logp.detach()


# --- measurements ---------------------------------------------------------------------------------


def _probe(case: dict, impl: str) -> float:
    """CPU peak-RSS growth (MiB) of one forward + backward; run in a fresh process by run()."""
    fn = _impls(case["op"], "cpu")[impl]
    _fwd_bwd(fn, _inputs(dict(case, N=8), "cpu"))  # load code paths (oneDNN, MKL) on a tiny shape
    inputs = _inputs(case, "cpu")
    return rss_peak_growth_mb(partial(_fwd_bwd, fn, inputs))


def _peak_bandwidth(device: str) -> float | None:
    """Peak DRAM bandwidth in bytes/s: the datasheet table, else the device properties."""
    peaks = device_peaks(torch.cuda.get_device_name(device))
    if peaks:
        return peaks[0]
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None


def _shape(case: dict) -> str:
    return f"N={case['N']} V={case['V']}" + (f" H={case['H']}" if case["H"] else "")


def _bw_frac(case: dict, ms: float, device: str) -> float | None:
    """sequence_logprobs on GPU: (2 reads + 1 write of N*V) / time / peak DRAM bandwidth."""
    if case["op"] != "sequence_logprobs" or not device.startswith("cuda"):
        return None
    peak = _peak_bandwidth(device)
    nbytes = 3 * case["N"] * case["V"] * _DTYPES[case["dtype"]].itemsize
    return round(nbytes / (ms / 1e3) / peak, 3) if peak else None


def _throughput(case: dict, ms: float, device: str) -> dict:
    """Achieved GB/s (sequence_logprobs: 3 N V bytes) or TFLOP/s (linear_logprobs: the 6 N V H
    FLOPs of the logits matmul and its two gradients), and as a fraction of the peak (GPU)."""
    peaks = device_peaks(torch.cuda.get_device_name(device)) if device.startswith("cuda") else None
    if case["op"] == "sequence_logprobs":
        rate = 3 * case["N"] * case["V"] * _DTYPES[case["dtype"]].itemsize / (ms / 1e3)
        return {"gb_s": round(rate / 1e9, 1)}
    rate = 6 * case["N"] * case["V"] * case["H"] / (ms / 1e3)
    frac = round(rate / peaks[1], 3) if peaks else None
    return {"tflop_s": round(rate / 1e12, 1), "flop_frac": frac}


def run(device: str, quick: bool, shape: tuple[int, int, int, str] | None = None) -> list[dict]:
    """Benchmark both log-prob ops on ``device`` ("cpu" or "cuda[:i]"); one dict per table row.

    Columns: op, impl, shape, dtype, fwd_bwd_ms (median), peak_mem_mb, max_abs_err_vs_naive
    (log-probs), bw_frac (op 1 on GPU: (2 reads + 1 write of N*V) / time / peak DRAM bandwidth),
    gb_s (op 1) or tflop_s and flop_frac (op 2: 6 N V H FLOPs / time / peak bf16 FLOP/s),
    time_vs_naive, mem_vs_naive. ``shape`` = (N, V, H, dtype) replaces the default sizes.
    """
    reps = 2 if quick else 5
    rows = []
    for case in _cases(device, quick, shape):
        inputs = _inputs(case, device)
        expected = None
        for impl, fn in _impls(case["op"], device).items():
            logp = _fwd_bwd(fn, inputs)
            expected = logp if expected is None else expected  # "naive" runs first
            err = (logp - expected).abs().max().item()
            call = partial(_fwd_bwd, fn, inputs)
            ms, mem = time_and_peak("kernels.bench_logprob", case, impl, call, inputs, device, reps)
            rows.append(row(case, impl, _shape(case), ms, mem, err, _bw_frac(case, ms, device))
                        | _throughput(case, ms, device))
        del inputs
    return add_ratios(rows)


if __name__ == "__main__":  # child process of kernels._bench_util.cpu_peak_mb
    probe_main(_probe)
