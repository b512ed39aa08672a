"""Speed and peak memory of the log-prob ops vs naive PyTorch (and Liger / TRL when installed).

``run(device, quick)`` returns one dict per table row; ``python -m kernels.bench`` prints them.
Peak memory: ``torch.cuda.max_memory_allocated`` growth on GPU; on CPU the growth of the peak RSS
(VmHWM, reset once the inputs exist) of a fresh subprocess over its RSS, during one forward +
backward (it includes the returned gradients, which every implementation must allocate).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

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
            peers["liger_flce"] = lambda h, w, t: -liger_fused_linear_cross_entropy(
                h, w, t, reduction="none").float()
    return peers


def _impls(op: str, device: str) -> dict[str, Callable]:
    """name -> callable(*inputs) for one op; Triton only on CUDA (the CPU interpreter is a test
    tool, far too slow to time)."""
    base = {"sequence_logprobs": (_naive_seq, sequence_logprobs),
            "linear_logprobs": (_naive_linear, linear_logprobs)}[op]
    impls = {"naive": base[0], "ours_torch": lambda *a: base[1](*a, backend="torch")}
    if device.startswith("cuda"):
        impls["ours_triton"] = lambda *a: base[1](*a, backend="triton")
        impls.update(_peers(op))
    return impls


# --- cases ---------------------------------------------------------------------------------------


def _cases(device: str, quick: bool) -> list[dict]:
    """(op, N, V, H, dtype) rows to measure on this device."""
    if device.startswith("cuda"):
        seq = [(4096, 32000, "bf16")] if quick else [(4096, 32000, "bf16"), (16384, 128256, "bf16")]
        lin = [(4096, 32000, 1024, "bf16")] if quick else [(8192, 128256, 4096, "bf16")]
    else:
        seq = [(1024, 32000, "fp32")] if quick else [(4096, 32000, "fp32")]
        lin = [(1024, 32000, 512, "fp32")] if quick else [(4096, 32000, 512, "fp32")]
    rows = [{"op": "sequence_logprobs", "N": n, "V": v, "H": None, "dtype": d} for n, v, d in seq]
    return rows + [{"op": "linear_logprobs", "N": n, "V": v, "H": h, "dtype": d}
                   for n, v, h, d in lin]


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
    return [randn(N, H, scale=1.0).requires_grad_(True),
            randn(V, H, scale=H**-0.5).requires_grad_(True), targets]


def _fwd_bwd(fn: Callable, inputs: list[torch.Tensor]) -> torch.Tensor:
    """One forward + backward of sum(logp * c) with a fixed cotangent; returns logp detached."""
    for x in inputs:
        x.grad = None
    logp = fn(*inputs)
    cot = torch.linspace(-1, 1, logp.numel(), device=logp.device)
    (logp * cot).sum().backward()
    return logp.detach()


# --- measurements ---------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_ms(fn: Callable, inputs: list[torch.Tensor], device: str, reps: int) -> float:
    _fwd_bwd(fn, inputs)  # warm-up (Triton compilation, allocator)
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        _fwd_bwd(fn, inputs)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _cuda_peak_mb(fn: Callable, inputs: list[torch.Tensor]) -> float:
    """Peak allocated memory above what existed before the call (inputs, caches), in MiB."""
    for x in inputs:
        x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _fwd_bwd(fn, inputs)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _status_mb(key: str) -> float:
    """A memory field of /proc/self/status ("VmRSS", "VmHWM" = peak RSS) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _cpu_peak_mb_child(case: dict, impl: str) -> float:
    """In a fresh process: peak RSS growth (MiB) over the RSS with the inputs allocated."""
    small = dict(case, N=8)
    fn = _impls(case["op"], "cpu")[impl]
    _fwd_bwd(fn, _inputs(small, "cpu"))  # load code paths (oneDNN, MKL) on a tiny shape
    inputs = _inputs(case, "cpu")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)
    base = _status_mb("VmRSS")
    _fwd_bwd(fn, inputs)
    return _status_mb("VmHWM") - base


def _cpu_peak_mb(case: dict, impl: str) -> float:
    """Run ``_cpu_peak_mb_child`` in a fresh interpreter, so that earlier peaks do not count."""
    cmd = [sys.executable, "-m", "kernels.bench_logprob", json.dumps({"case": case, "impl": impl})]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"memory probe {case} {impl} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def _peak_bandwidth(device: str) -> float | None:
    """Theoretical DRAM bandwidth in bytes/s from the device properties, if it reports them."""
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None


def _row(case: dict, impl: str, ms: float, mem: float, err: float, device: str) -> dict:
    shape = f"N={case['N']} V={case['V']}" + (f" H={case['H']}" if case["H"] else "")
    row = {"op": case["op"], "impl": impl, "shape": shape, "dtype": case["dtype"],
           "fwd_bwd_ms": round(ms, 2), "peak_mem_mb": round(mem, 1),
           "max_abs_err_vs_naive": float(f"{err:.3g}"), "bw_frac": None}
    if case["op"] == "sequence_logprobs" and device.startswith("cuda"):
        peak = _peak_bandwidth(device)
        nbytes = 3 * case["N"] * case["V"] * _DTYPES[case["dtype"]].itemsize  # 2 reads + 1 write
        row["bw_frac"] = round(nbytes / (ms / 1e3) / peak, 3) if peak else None
    return row


def _add_ratios(rows: list[dict]) -> list[dict]:
    """time_vs_naive, mem_vs_naive: each row over the naive row of the same op and shape."""
    naive = {(r["op"], r["shape"]): r for r in rows if r["impl"] == "naive"}
    for r in rows:
        n = naive[(r["op"], r["shape"])]
        r["time_vs_naive"] = round(r["fwd_bwd_ms"] / n["fwd_bwd_ms"], 3)
        mem = n["peak_mem_mb"]
        r["mem_vs_naive"] = round(r["peak_mem_mb"] / mem, 3) if mem else None
    return rows


def run(device: str, quick: bool) -> list[dict]:
    """Benchmark both log-prob ops on ``device`` ("cpu" or "cuda[:i]"); one dict per table row.

    Columns: op, impl, shape, dtype, fwd_bwd_ms (median), peak_mem_mb, max_abs_err_vs_naive
    (log-probs), bw_frac (op 1 on GPU: (2 reads + 1 write of N*V) / time / peak DRAM bandwidth),
    time_vs_naive, mem_vs_naive.
    """
    reps = 2 if quick else 5
    rows = []
    for case in _cases(device, quick):
        inputs = _inputs(case, device)
        expected = None
        for impl, fn in _impls(case["op"], device).items():
            logp = _fwd_bwd(fn, inputs)
            expected = logp if expected is None else expected  # "naive" runs first
            err = (logp - expected).abs().max().item()
            ms = _time_ms(fn, inputs, device, reps)
            cuda = device.startswith("cuda")
            mem = _cuda_peak_mb(fn, inputs) if cuda else _cpu_peak_mb(case, impl)
            rows.append(_row(case, impl, ms, mem, err, device))
        del inputs
    return _add_ratios(rows)


if __name__ == "__main__":  # child process of _cpu_peak_mb
    spec = json.loads(sys.argv[1])
    print(_cpu_peak_mb_child(spec["case"], spec["impl"]))
