"""PPO's clipped value loss by hand (value, gradient, stats), explained variance, whitening."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_rlhf.losses.ppo import (
    explained_variance,
    explained_variance_from_moments,
    masked_whiten,
    value_loss,
    variance_moments,
)

# token 0: inside the clip range; token 1: clipped term smaller (unclipped gradient);
# token 2: clipped term larger (gradient cut); token 3: masked garbage
V = [0.5, 1.0, 0.9, 99.0]
OLD = [0.4, 0.5, 0.2, -99.0]
RET = [1.0, 0.8, 1.0, 5.0]
MASK = [1, 1, 1, 0]


def test_value_loss_by_hand():
    v = torch.tensor([V], requires_grad=True)
    loss, stats = value_loss(v, torch.tensor([OLD]), torch.tensor([RET]), torch.tensor([MASK]))
    # 0.5 * mean(max(0.25, 0.25), max(0.04, (0.7 - 0.8)^2), max(0.01, (0.4 - 1.0)^2))
    assert loss.item() == pytest.approx(0.5 * (0.25 + 0.04 + 0.36) / 3)
    loss.backward()
    torch.testing.assert_close(v.grad, torch.tensor([[-0.5 / 3, 0.2 / 3, 0.0, 0.0]]))
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    ret, resid = np.array(RET[:3]), np.array(RET[:3]) - np.array(V[:3])
    assert stats["explained_variance"].item() == pytest.approx(1 - resid.var() / ret.var())


def test_value_loss_without_clip():
    v = torch.tensor([V], requires_grad=True)
    loss, stats = value_loss(
        v, torch.tensor([OLD]), torch.tensor([RET]), torch.tensor([MASK]), clip=None
    )
    assert loss.item() == pytest.approx(0.5 * (0.25 + 0.04 + 0.01) / 3)
    assert stats["clip_frac"].item() == 0.0


def test_value_loss_shape_error():
    with pytest.raises(ValueError, match="returns"):
        value_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))


def test_explained_variance_perfect_and_constant():
    ret = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.ones(1, 3)
    assert explained_variance(ret, ret, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(ret, 2.0), ret, mask).item() == pytest.approx(0.0)


def test_explained_variance_summed_over_ranks_is_that_of_the_whole_batch():
    """Two "ranks" with different widths: the summed moments give the EV of all their tokens,
    which is not the mean of the two per-rank EVs."""
    v1, r1 = torch.tensor([[0.1, 0.5, 9.0]]), torch.tensor([[0.0, 1.0, 7.0]])
    m1 = torch.tensor([[1, 1, 0]])
    v2 = torch.tensor([[2.0, 2.5], [3.0, 0.0]])
    r2, m2 = torch.tensor([[2.0, 3.0], [4.0, 0.0]]), torch.tensor([[1, 1], [1, 0]])
    summed = variance_moments(v1, r1, m1) + variance_moments(v2, r2, m2)
    ret = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    resid = ret - np.array([0.1, 0.5, 2.0, 2.5, 3.0])
    assert explained_variance_from_moments(summed).item() == pytest.approx(
        1 - resid.var() / ret.var(), rel=1e-6
    )
    per_rank = (explained_variance(v1, r1, m1) + explained_variance(v2, r2, m2)) / 2
    assert per_rank.item() != pytest.approx(1 - resid.var() / ret.var(), rel=1e-2)


def test_explained_variance_of_constant_or_empty_returns_is_zero():
    ret = torch.full((2, 3), 0.7)
    assert explained_variance(ret * 0.5, ret, torch.ones(2, 3)).item() == 0.0
    assert explained_variance(ret, ret, torch.zeros(2, 3)).item() == 0.0


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = masked_whiten(x, mask)
    want = (np.array([1.0, 2.0, 3.0]) - 2.0) / np.sqrt(2 / 3 + 1e-8)
    np.testing.assert_allclose(out[0, :3].numpy(), want, rtol=1e-6)
    assert out[0, 3] == 0
    scaled = masked_whiten(x, mask, shift_mean=False)
    np.testing.assert_allclose(scaled[0, :3].numpy(), [1, 2, 3] / np.sqrt(2 / 3 + 1e-8), rtol=1e-6)


def test_value_loss_ignores_infinite_padding():
    v = torch.tensor([[0.5, float("inf")]], requires_grad=True)
    old = torch.tensor([[0.4, float("nan")]])
    ret = torch.tensor([[1.0, float("-inf")]])
    loss, _ = value_loss(v, old, ret, torch.tensor([[1, 0]]))
    loss.backward()
    assert loss.item() == pytest.approx(0.125)
    torch.testing.assert_close(v.grad, torch.tensor([[-0.5, 0.0]]))
