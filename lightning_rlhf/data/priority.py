"""Weighted (priority) sampling of training rows, used by the data module for any algorithm that
sets ``sample_weights`` (A-LoL's priorities: Baheti et al., "Leftover Lunch", ICLR 2024).

Training rows are drawn i.i.d. with replacement with P(i) = w_i / sum_j w_j (A-LoL: w = A+ for
the A-LoL variants, R for the reward baselines, 1 for nll); rows with w <= 0 are never drawn. An
epoch draws as many items as there are rows with w > 0 (= round(positive_fraction * N)), so the
step budget of an epoch is scaled by the positive fraction: ceil(#positive / (batch_size *
num_replicas)) batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DistributedSampler


class PrioritySampler(DistributedSampler):
    """Weighted i.i.d. sampling with replacement, sharded over ranks, resumable.

    One global stream of ``num_replicas * num_samples`` draws is generated from ``seed + epoch``;
    rank r takes every ``num_replicas``-th draw starting at r, so the ranks' shares are disjoint
    parts of one reproducible stream whose union is the single-process stream. It subclasses
    ``DistributedSampler`` only so that Lightning does not wrap it in another one (its parent's
    ``__init__`` is not called: no process group is needed).

    Args:
        weights: (N,) non-negative priorities; rows with weight 0 are never drawn.
        num_samples: draws per rank per epoch; default ceil(#positive / num_replicas).
        num_replicas: number of ranks sharing the stream.
        rank: this rank.
        seed: base seed; epoch e uses ``seed + e``.
        resume_offset: read at the first iteration only: draws of this rank already trained on
            in the current epoch (non-zero after a mid-epoch resume), skipped.
    """

    def __init__(
        self,
        weights: torch.Tensor,
        num_samples: int | None = None,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        resume_offset: Callable[[], int] | None = None,
    ) -> None:
        weights = torch.as_tensor(weights, dtype=torch.float64).flatten()
        check_priorities(weights, "PrioritySampler")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"PrioritySampler: rank {rank} not in [0, {num_replicas})")
        self.weights, self.seed, self.epoch = weights, seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        positive = int((weights > 0).sum())
        self.num_samples = num_samples or math.ceil(positive / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self._cdf = weights.cumsum(0)  # (N,)
        self._last_positive = int((weights > 0).nonzero()[-1, 0])
        self.resume_offset = resume_offset

    def set_epoch(self, epoch: int) -> None:
        """Select the stream of ``epoch`` (Lightning calls this at each epoch start)."""
        self.epoch = epoch

    def draws(self, epoch: int) -> torch.Tensor:
        """The whole epoch's global stream: (num_replicas * num_samples,) row indices."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        u = torch.rand(self.total_size, generator=generator, dtype=torch.float64)
        idx = torch.searchsorted(self._cdf, u * self._cdf[-1], right=True)
        # u * total can round up to total itself; the clamp keeps it on a positive row
        return idx.clamp_(max=self._last_positive)

    def __iter__(self) -> Iterator[int]:
        share = self.draws(self.epoch)[self.rank :: self.num_replicas].tolist()
        skip = self.resume_offset() if self.resume_offset is not None else 0
        self.resume_offset = None  # later epochs start at their beginning
        return iter(share[skip:])

    def __len__(self) -> int:
        return self.num_samples

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share for the stream to continue where it stopped."""
        return {
            "seed": self.seed,
            "num_samples": self.num_samples,
            "num_replicas": self.num_replicas,
        }

    def check_resumable(self, saved: dict[str, Any]) -> None:
        """One-line error when a checkpoint's sampler ``identity`` differs from this one's."""
        for key, value in self.identity().items():
            if saved.get(key, value) != value:
                raise ValueError(
                    f"PrioritySampler: cannot resume, checkpoint has {key}={saved[key]} but this "
                    f"run has {value}"
                )


def check_priorities(weights: torch.Tensor, where: str) -> None:
    """One-line errors for non-finite priorities or for none being positive."""
    bad = ~torch.isfinite(weights)
    if bad.any():
        raise ValueError(
            f"{where}: priority of row {int(bad.nonzero()[0, 0])} is {weights[bad][0]}"
        )
    positive = int((weights > 0).sum())
    if positive == 0:
        raise ValueError(
            f"{where}: nothing to train on: 0 of {weights.numel()} rows have a positive priority "
            f"({int((weights == 0).sum())} zero, {int((weights < 0).sum())} negative)"
        )
