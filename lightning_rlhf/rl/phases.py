"""The phases of an online step (generate, score, logprobs, advantages, update): their timing
(``timed``, logged as ``time/<phase>``), the phase running now (``ACTIVE_PHASES``, which the
progress lines read) and the averaging of per-minibatch stats."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

#: the phases running now, innermost last, as (name, perf_counter start): progress reports read it
ACTIVE_PHASES: list[tuple[str, float]] = []


@contextmanager
def timed(timings: dict[str, float], name: str, device: torch.device):
    """Add the wall time of the block to ``timings[name]`` (synchronising CUDA first)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    ACTIVE_PHASES.append((name, start))
    try:
        yield
    finally:
        ACTIVE_PHASES.pop()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def mean_stats(stats: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Average a list of stats dicts key by key."""
    keys = stats[0].keys() if stats else ()
    return {k: torch.stack([torch.as_tensor(s[k]).float() for s in stats]).mean() for k in keys}
