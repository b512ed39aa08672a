"""P3O on the losses/README.md §6 worked check (Delta = 0.775), V1 and V2 by hand, and invariance
to a per-prompt reward shift."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.losses.p3o import p3o_loss
from tests.losses.reference import p3o_clip_objective_ref

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


# --- P3O ---------------------------------------------------------------------------------------
# losses/README.md §6: r1 = 1.0, r2 = 0.2, beta = 0.05; theta/old/ref: y1 -20.0/-20.3/-21.0,
# y2 -25.0/-24.8/-25.5.  r~1 = 1 - 0.05 * 1.0 = 0.95, r~2 = 0.2 - 0.05 * 0.5 = 0.175,
# Delta = 0.775; rho1 = e^0.3, rho2 = e^-0.2, rho1 rho2 = e^0.1 (all inside [1/10, 10]).
# V1, eps 0.2: term 1 = max(-D rho2 rho1, -D rho2 * 1.2) = -0.93 e^-0.2 (clipped, no grad);
#   term 2 = max(D rho1 rho2, D rho1 clip(e^-0.2 = 0.8187)) = 0.775 e^0.1 (unclipped)
#   L = (0.775 e^0.1 - 0.93 e^-0.2) / 2; dL/dl1 = 0; dL/dl2 = 0.775 e^0.1 / 2
# V1, eps 0.5: nothing clips: L = 0; dL/dl1 = -0.775 e^0.1 / 2 = -dL/dl2
# V2, eps 0.2: u = 5.0, u_old = 4.5, w = e^0.1: max(-D w 5, -D w 4.7) = -0.775 e^0.1 * 4.7
#   (clipped: zero gradient)
# V2, eps 1.0: clip(5, 3.5, 5.5) = 5: L = -0.775 e^0.1 * 5; dL/dl1 = -0.775 e^0.1 = -dL/dl2
DW = 0.775 * math.exp(0.1)
P3O_WORKED = [
    ("v1", 0.2, (DW - 0.93 * math.exp(-0.2)) / 2, 0.0, DW / 2),
    ("v1", 0.5, 0.0, -DW / 2, DW / 2),
    ("v2", 0.2, -DW * 4.7, 0.0, 0.0),
    ("v2", 1.0, -DW * 5.0, -DW, DW),
]


def _p3o_inputs(dtype: torch.dtype = torch.float32):
    l1 = torch.tensor([-20.0], dtype=dtype, requires_grad=True)
    l2 = torch.tensor([-25.0], dtype=dtype, requires_grad=True)
    rest = dict(old1=[-20.3], ref1=[-21.0], old2=[-24.8], ref2=[-25.5], r1=[1.0], r2=[0.2])
    t = {k: torch.tensor(v, dtype=dtype) for k, v in rest.items()}
    return l1, l2, (l1, t["old1"], t["ref1"], l2, t["old2"], t["ref2"], t["r1"], t["r2"])


@pytest.mark.parametrize(("variant", "eps", "want", "g1", "g2"), P3O_WORKED)
def test_p3o_worked_check_gradients(variant, eps, want, g1, g2):
    l1, l2, args = _p3o_inputs()
    loss, stats = p3o_loss(*args, variant=variant, clip_eps=eps, kl_beta=0.05)
    torch.testing.assert_close(stats["delta_mean"], torch.tensor(0.775))
    grads = torch.autograd.grad(loss, (l1, l2))
    torch.testing.assert_close(loss, torch.tensor(want))
    torch.testing.assert_close(torch.cat(grads), torch.tensor([g1, g2]))


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_p3o_matches_reference_and_shift_invariance(variant):
    g = torch.Generator().manual_seed(0)
    B = 6
    l1 = (-20 + torch.randn(B, generator=g)).requires_grad_(True)
    l2 = (-22 + torch.randn(B, generator=g)).requires_grad_(True)
    o1 = l1.detach() + 0.2 * torch.randn(B, generator=g)
    o2 = l2.detach() + 0.2 * torch.randn(B, generator=g)
    ref1, ref2 = l1.detach() - 0.5, l2.detach() + 0.3
    r1, r2 = torch.randn(B, generator=g), torch.randn(B, generator=g)
    args = (l1, o1, ref1, l2, o2, ref2)
    loss, _ = p3o_loss(*args, r1, r2, variant=variant)
    loss_ref = p3o_clip_objective_ref(*args, r1, r2, variant=variant)
    grads = torch.autograd.grad(loss, (l1, l2))
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(grads, torch.autograd.grad(loss_ref, (l1, l2)))
    shifted, _ = p3o_loss(*args, r1 + 3.0, r2 + 3.0, variant=variant)
    torch.testing.assert_close(torch.autograd.grad(shifted, (l1, l2)), grads)
