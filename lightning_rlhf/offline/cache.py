"""The A-LoL cache file: tensors, numbers and strings only, read with ``weights_only=True`` (a
file planted in a run directory is refused, never executed), written atomically next to its
destination; a cache that cannot be read, or was made for other inputs, is rebuilt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_rlhf.io import atomic_save


def load_cache(path: Path, rewards: torch.Tensor, key: dict) -> dict | None:
    """The cache at ``path`` if it was made for these rows, rewards, reference and options (see
    ``offline.alol.cache_key``), else None (and the caller recomputes it). An unreadable file
    (truncated, corrupt, or holding anything but plain data) is reported in one line and
    ignored."""
    if not path.exists():
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
        old = cache["rewards"]
    except Exception as err:  # noqa: BLE001 - any unreadable cache is rebuilt, never trusted
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        rank_zero_warn(
            f"A-LoL: cannot read the cache {path} ({type(err).__name__}: {first[:200]}); "
            "rebuilding it"
        )
        return None
    same_rewards = old.shape == rewards.shape and torch.equal(old, rewards)
    if not same_rewards or cache.get("key") != key:
        changed = [k for k in key if cache.get("key", {}).get(k) != key[k]] or ["rewards"]
        rank_zero_info(f"A-LoL: {path} was made for another {', '.join(changed)}; recomputing it")
        return None
    return cache


def save_cache(path: Path, cache: dict[str, Any]) -> None:
    """Write ``cache`` to ``path`` atomically (``io.atomic_save``: a temporary file in the same
    directory, fsynced, renamed over the old one, which stays intact until then)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(cache, path)
