"""Priority sampler: frequencies follow the priorities, A <= 0 never drawn, ranks and resume."""

from __future__ import annotations

import pytest
import torch

from lightning_rlhf.data.priority import PrioritySampler


def _weights() -> torch.Tensor:
    w = torch.tensor([0.5, 0.0, 2.0, -1.0, 1.0, 0.25, 0.0, 4.0, 1.25, 3.0])
    return w.clamp(min=0)  # A+ of these advantages


def test_frequencies_match_priorities():
    """100k draws, fixed seed: Pearson chi-square against w_i / sum w over the 7 positive rows
    (6 degrees of freedom) below 22.46, its 0.1% critical value; zero-weight rows never drawn."""
    sampler = PrioritySampler(_weights(), num_samples=100_000, seed=3)
    draws = sampler.draws(0)
    assert draws[:50].tolist() == list(sampler)[:50], "draws() is the stream __iter__ yields"
    counts = torch.bincount(draws, minlength=10).double()
    expected = _weights().double() / _weights().sum() * counts.sum()
    positive = expected > 0
    chi2 = ((counts[positive] - expected[positive]) ** 2 / expected[positive]).sum()
    assert chi2 < 22.46, (counts, expected)
    assert counts[~positive].sum() == 0, "rows with A <= 0 must never be drawn"


def test_epoch_length_scaled_by_positive_fraction():
    w = _weights()  # 7 of 10 positive
    assert len(PrioritySampler(w)) == 7
    assert len(PrioritySampler(w, num_replicas=2, rank=1)) == 4  # ceil(7 / 2)
    assert len(list(PrioritySampler(w))) == 7


def test_epochs_are_reproducible_and_differ():
    a, b = PrioritySampler(_weights(), 50, seed=1), PrioritySampler(_weights(), 50, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


def test_rank_shares_partition_one_stream():
    full = PrioritySampler(_weights(), num_samples=60, seed=5)
    shares = [
        list(PrioritySampler(_weights(), 20, num_replicas=3, rank=r, seed=5)) for r in range(3)
    ]
    assert all(len(s) == 20 for s in shares)
    interleaved = [shares[i % 3][i // 3] for i in range(60)]
    assert interleaved == list(full), "rank shares must be disjoint strided parts of one stream"
    again = list(PrioritySampler(_weights(), 20, num_replicas=3, rank=1, seed=5))
    assert again == shares[1]


def test_resume_offset_continues_the_stream_once():
    sampler = PrioritySampler(_weights(), num_samples=30, seed=7)
    sampler.set_epoch(2)
    stream = list(sampler)

    resumed = PrioritySampler(_weights(), num_samples=30, seed=7, resume_offset=lambda: 11)
    resumed.set_epoch(2)
    assert list(resumed) == stream[11:]
    assert list(resumed) == stream, "after the resumed epoch, the next iteration is whole"
    resumed.set_epoch(3)
    assert len(list(resumed)) == 30


def test_errors():
    with pytest.raises(
        ValueError, match=r"nothing to train on: 0 of 3 rows .*\(1 zero, 2 negative\)"
    ):
        PrioritySampler(torch.tensor([0.0, -1.0, -0.5]))
    with pytest.raises(ValueError, match="priority of row 1 is nan"):
        PrioritySampler(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"rank 2 not in \[0, 2\)"):
        PrioritySampler(_weights(), num_replicas=2, rank=2)
    saved = PrioritySampler(_weights(), seed=1).identity()
    with pytest.raises(ValueError, match="checkpoint has seed=1 but this run has 2"):
        PrioritySampler(_weights(), seed=2).check_resumable(saved)
