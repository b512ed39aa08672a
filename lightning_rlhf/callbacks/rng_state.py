"""Exact resume of random streams: the python ``random``, numpy and torch (CPU and every CUDA
device) generator states of every rank go into each checkpoint and are put back before the first
training batch after a resume (the rollout sampling of the online algorithms, dropout and
minibatch shuffles draw from them)."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn


def collect_rng_state() -> dict[str, Any]:
    """This process's generator states, as plain types and tensors (loadable with
    ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the states :func:`collect_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class RNGState(L.Callback):
    """Checkpoints every rank's RNG states (gathered to the saving rank) and restores this rank's
    at the first training batch after a resume, so a resumed run draws the same random numbers
    as the uninterrupted one. A resume on a different world size keeps the fresh states (warned).
    """

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        """Called on every rank while a checkpoint is being built."""
        return {"ranks": self._gather(collect_rng_state())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("ranks")

    def on_train_batch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """Restore once, right before the first batch of a resumed run (after everything the
        set-up drew: model init, sanity check, dataloader workers' seeds)."""
        ranks, self._pending = self._pending, None
        if not ranks:
            return
        if len(ranks) != trainer.world_size:
            rank_zero_warn(
                f"RNGState: the checkpoint holds RNG states of {len(ranks)} ranks but the run has "
                f"{trainer.world_size}; random streams start fresh (resume is not bit-exact)"
            )
            return
        restore_rng_state(ranks[trainer.global_rank])

    @staticmethod
    def _gather(state: dict[str, Any]) -> list[dict[str, Any]]:
        """Every rank's ``state``, in rank order (just ``[state]`` without a process group)."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return [state]
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, state)
        return gathered
