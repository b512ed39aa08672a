"""Measuring helpers shared by the ``kernels.bench_*`` modules: median time, peak memory, rows,
and the datasheet peaks (bandwidth, bf16 FLOP/s) that achieved numbers are divided by.

Peak memory is the growth of one call over what existed before it: on CUDA the allocator's
``max_memory_allocated``; on CPU the peak RSS (VmHWM, reset through ``/proc/self/clear_refs`` once
the inputs exist; Linux >= 4.0) of a fresh subprocess over its RSS, so that no earlier peak of the
parent counts (``ru_maxrss`` would: it is inherited through fork + exec).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

#: (substring of ``torch.cuda.get_device_name()``, peak DRAM bytes/s, dense bf16 tensor FLOP/s)
#: from NVIDIA's datasheets; the first case-insensitive match wins, so variants come first.
DEVICE_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H200 NVL", 4.8e12, 835e12),
    ("H200", 4.8e12, 989e12),  # SXM
    ("H100 NVL", 3.9e12, 835e12),
    ("H100 PCIe", 2.0e12, 756e12),
    ("H100", 3.35e12, 989e12),  # SXM5, e.g. "NVIDIA H100 80GB HBM3"
    ("A100-SXM4-40GB", 1.555e12, 312e12),
    ("A100-PCIE-40GB", 1.555e12, 312e12),
    ("A100 80GB PCIe", 1.935e12, 312e12),
    ("A100", 2.039e12, 312e12),  # SXM4 80GB
)


def device_peaks(name: str) -> tuple[float, float] | None:
    """(peak bytes/s, peak bf16 FLOP/s) of a device by its name, or None if not in the table."""
    for key, bandwidth, flops in DEVICE_PEAKS:
        if key.lower() in name.lower():
            return bandwidth, flops
    return None


def sync(device: str) -> None:
    """Wait for queued CUDA work, so that a timer measures it; nothing on CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(call: Callable[[], object], device: str, reps: int) -> float:
    """Median wall time of ``call()`` in ms over ``reps`` runs, after one warm-up run (Triton
    compilation, allocator growth)."""
    call()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        call()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cuda_peak_mb(call: Callable[[], object], inputs: list[torch.Tensor]) -> float:
    """Peak allocated CUDA memory of ``call()`` above what existed before it (inputs, caches), in
    MiB; the inputs' gradients from earlier calls are dropped first."""
    for x in inputs:
        x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _status_mb(key: str) -> float:
    """A memory field of /proc/self/status ("VmRSS", "VmHWM" = peak RSS) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS (glibc), so that the measured call cannot reuse
    resident memory that earlier temporaries left behind and show no growth."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: small peaks may read low
        ctypes.CDLL(None).malloc_trim(0)


def rss_peak_growth_mb(call: Callable[[], object]) -> float:
    """Peak RSS growth of ``call()`` over the current RSS, in MiB. Call it in a fresh process
    (``cpu_peak_mb``) once the inputs exist."""
    _malloc_trim()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    base = _status_mb("VmRSS")
    call()
    return _status_mb("VmHWM") - base


def cpu_peak_mb(module: str, case: dict, impl: str) -> float:
    """Run ``python -m module '{"case": case, "impl": impl}'`` in a fresh interpreter and return
    the number it prints last (the module's ``__main__`` calls ``probe_main``)."""
    cmd = [sys.executable, "-m", module, json.dumps({"case": case, "impl": impl})]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"memory probe {module} {case} {impl} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def probe_main(probe: Callable[[dict, str], float]) -> None:
    """The child side of ``cpu_peak_mb``: print ``probe(case, impl)`` for the JSON in argv[1]."""
    spec = json.loads(sys.argv[1])
    print(probe(spec["case"], spec["impl"]))


def time_and_peak(
    module: str,
    case: dict,
    impl: str,
    call: Callable[[], object],
    inputs: list,
    device: str,
    reps: int,
) -> tuple[float, float]:
    """(median ms, peak MiB) of one implementation on one case; on CPU the peak comes from a
    fresh ``python -m module`` process that rebuilds the case's inputs itself."""
    ms = time_ms(call, device, reps)
    mem = (
        cuda_peak_mb(call, inputs) if device.startswith("cuda") else cpu_peak_mb(module, case, impl)
    )
    return ms, mem


def row(
    case: dict,
    impl: str,
    shape: str,
    ms: float,
    mem: float,
    err: float | None,
    bw_frac: float | None = None,
) -> dict:
    """One table row, in the column order ``kernels.bench`` prints."""
    return {
        "op": case["op"],
        "impl": impl,
        "shape": shape,
        "dtype": case["dtype"],
        "fwd_bwd_ms": round(ms, 2),
        "peak_mem_mb": round(mem, 1),
        "max_abs_err_vs_naive": None if err is None else float(f"{err:.3g}"),
        "bw_frac": bw_frac,
    }


def add_ratios(rows: list[dict]) -> list[dict]:
    """time_vs_naive, mem_vs_naive: each row over the naive row of the same op and shape measured
    in the same run (None where the naive peak is not positive)."""
    naive = {(r["op"], r["shape"]): r for r in rows if r["impl"] == "naive"}
    for r in rows:
        n = naive[(r["op"], r["shape"])]
        r["time_vs_naive"] = round(r["fwd_bwd_ms"] / n["fwd_bwd_ms"], 3)
        mem = n["peak_mem_mb"]
        r["mem_vs_naive"] = round(r["peak_mem_mb"] / mem, 3) if mem > 0 else None
    return rows
