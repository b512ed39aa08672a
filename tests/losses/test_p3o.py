"""P3O on the ALGORITHMS.md 6 worked check (Delta = 0.775), V1 and V2 by hand, and invariance to a
per-prompt reward shift."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.losses.p3o import p3o_loss

THETA = (-20.0, -25.0)
OLD = (-20.3, -24.8)
REF = (-21.0, -25.5)


def _worked(variant: str, rewards=(1.0, 0.2)):
    l1 = torch.tensor([THETA[0]], requires_grad=True)
    l2 = torch.tensor([THETA[1]], requires_grad=True)
    t = lambda x: torch.tensor([x])  # noqa: E731
    loss, stats = p3o_loss(l1, t(OLD[0]), t(REF[0]), l2, t(OLD[1]), t(REF[1]),
                           t(rewards[0]), t(rewards[1]), variant=variant)  # fmt: skip
    loss.backward()
    return loss.item(), l1.grad.item(), l2.grad.item(), stats


def test_worked_check_delta():
    *_, stats = _worked("v1")
    # r~1 = 1.0 - 0.05 * (-20 + 21) = 0.95; r~2 = 0.2 - 0.05 * (-25 + 25.5) = 0.175
    assert stats["delta_mean"].item() == pytest.approx(0.775)


def test_worked_check_v1():
    delta, rho1, rho2 = 0.775, math.exp(0.3), math.exp(-0.2)  # rho1 = 1.3499 > 1.2: clipped
    # first half: max(-D rho2 rho1, -D rho2 * 1.2) = -D rho2 * 1.2 (no gradient to l1)
    # second half: rho2 = 0.8187 inside [0.8, 1.2]: D rho1 rho2 (gradient D rho1 rho2 / 2 to l2)
    want = 0.5 * (-delta * rho2 * 1.2 + delta * rho1 * rho2)
    loss, g1, g2, stats = _worked("v1")
    assert loss == pytest.approx(want, rel=1e-5)
    assert loss == pytest.approx(0.0475445, abs=1e-5)
    assert g1 == 0.0
    assert g2 == pytest.approx(0.5 * delta * rho1 * rho2, rel=1e-5)
    assert stats["clip_frac"].item() == pytest.approx(0.5)


def test_worked_check_v2():
    delta, w = 0.775, math.exp(0.3 - 0.2)  # w = rho1 rho2, inside [1/10, 10]
    u, u_old = 5.0, 4.5  # clip(u, 4.3, 4.7) = 4.7 and -D w 4.7 > -D w 5: clipped, no gradient
    loss, g1, g2, stats = _worked("v2")
    assert loss == pytest.approx(-delta * w * min(u, u_old + 0.2), rel=1e-5)
    assert loss == pytest.approx(-4.025586, abs=1e-5)
    assert (g1, g2) == (0.0, 0.0)
    assert stats["clip_frac"].item() == 1.0


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_invariant_to_per_prompt_reward_shift(variant):
    g = torch.Generator().manual_seed(1)
    B = 6
    theta = -torch.rand(2, B, generator=g) * 10
    old = theta + 0.3 * torch.randn(2, B, generator=g)
    ref = theta + 0.5 * torch.randn(2, B, generator=g)
    rewards = torch.randn(2, B, generator=g)
    shift = 5 * torch.randn(B, generator=g)  # a different shift per prompt

    def run(r):
        l = theta.clone().requires_grad_(True)  # noqa: E741
        loss, _ = p3o_loss(l[0], old[0], ref[0], l[1], old[1], ref[1], r[0], r[1],
                           variant=variant)  # fmt: skip
        loss.backward()
        return loss, l.grad

    loss, grad = run(rewards)
    loss_shifted, grad_shifted = run(rewards + shift)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(loss_shifted, loss)
    torch.testing.assert_close(grad_shifted, grad)


def test_shape_errors():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="rewards2"):
        p3o_loss(x, x, x, x, x, x, x, torch.zeros(2))
    with pytest.raises(ValueError, match="variant"):
        p3o_loss(x, x, x, x, x, x, x, x, variant="v3")
