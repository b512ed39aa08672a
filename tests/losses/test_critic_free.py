"""RLOO, ReMax and GRPO advantages, REINFORCE and GRPO losses by hand (value and gradient), and
RLOO with K = 2 giving exactly P3O's on-policy pairwise gradient."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.losses.critic_free import (
    grpo_advantages,
    grpo_loss,
    reinforce_loss,
    remax_advantages,
    rloo_advantages,
)
from lightning_rlhf.losses.p3o import p3o_loss


def test_rloo_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.2, 0.8]])
    want = torch.tensor([[0.75, -0.75, 0.0], [-0.3, -0.3, 0.6]])
    torch.testing.assert_close(rloo_advantages(r), want)
    with pytest.raises(ValueError, match="K >= 2"):
        rloo_advantages(torch.ones(3, 1))


def test_remax_advantages():
    got = remax_advantages(torch.tensor([1.0, 0.2]), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(got, torch.tensor([0.5, -0.3]))


def test_grpo_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [3.0, 1.0, 2.0, 2.0]])
    s = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]: sqrt(4 * 0.25 / 3)
    s3 = math.sqrt(2 / 3)  # of [3, 1, 2, 2]: sqrt((1 + 1) / 3)
    eps = 1e-6
    want = torch.tensor(
        [
            [0.5 / (s + eps), -0.5 / (s + eps), -0.5 / (s + eps), 0.5 / (s + eps)],
            [0.0, 0.0, 0.0, 0.0],
            [1 / (s3 + eps), -1 / (s3 + eps), 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(grpo_advantages(r), want)
    torch.testing.assert_close(grpo_advantages(r, scale=False), r - r.mean(1, keepdim=True))


def test_reinforce_loss_value_and_gradient_by_hand():
    lp = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, 5.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([0.5, -2.0])
    loss, stats = reinforce_loss(lp, mask, adv)
    # -(0.5 * (-3.5) + (-2.0) * (-1.5)) / 2 = -(-1.75 + 3.0) / 2
    assert loss.item() == pytest.approx(-0.625)
    loss.backward()
    torch.testing.assert_close(lp.grad, -adv[:, None] * mask / 2)
    assert stats["seq_logprob_mean"].item() == pytest.approx(-2.5)


def test_grpo_loss_value_and_gradient_by_hand():
    lp = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, 5.0]], requires_grad=True)
    old = torch.tensor([[-1.1, -0.5, -1.8], [-0.3, -0.8, 0.0]])  # (1, 1) clipped
    ref = torch.tensor([[-1.2, -0.4, -2.5], [-0.2, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -0.5])
    beta, eps = 0.04, 0.2
    total, grads = 0.0, torch.zeros(2, 3)
    for b, t in mask.nonzero().tolist():  # one token at a time, from the formulas
        x, o, r, a = lp[b, t].item(), old[b, t].item(), ref[b, t].item(), adv[b].item()
        rho = math.exp(x - o)
        unclipped, clipped = -a * rho, -a * min(max(rho, 1 - eps), 1 + eps)
        k3 = math.exp(r - x) - (r - x) - 1
        total += max(unclipped, clipped) + beta * k3
        d_policy = -a * rho if unclipped >= clipped else 0.0
        grads[b, t] = d_policy + beta * (1 - math.exp(r - x))
    n = int(mask.sum())
    loss, stats = grpo_loss(lp, old, ref, adv, mask, clip_eps=eps, beta=beta)
    assert loss.item() == pytest.approx(total / n, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(lp.grad, grads / n)
    assert 0 < stats["clip_frac"].item() < 1  # the example has a clipped token


def test_rloo_k2_gradient_equals_p3o_on_policy_gradient():
    """With K = 2, REINFORCE over the 2B sequences with RLOO advantages (mean over the 2B
    sequences) has loss -(1/2B) sum_b (r1 - r2)(l1 - l2), whose gradient is exactly that of P3O
    V1 at rho = 1 (old = theta, no clipping active, kl_beta = 0): -(1/B) sum_b (D/2) grad(l1 - l2).
    V2 has no 1/2, so its gradient is exactly twice as large."""
    g = torch.Generator().manual_seed(0)
    B, T = 4, 5
    base = -torch.rand(B, 2, T, generator=g) * 3  # (B, K=2, T)
    mask = (torch.rand(B, 2, T, generator=g) < 0.8).long()
    mask[..., 0] = 1
    rewards = torch.randn(B, 2, generator=g)

    lp = base.clone().requires_grad_(True)
    adv = rloo_advantages(rewards).reshape(2 * B)
    reinforce_loss(lp.reshape(2 * B, T), mask.reshape(2 * B, T), adv)[0].backward()
    grad_rloo = lp.grad.clone()

    for variant, factor in (("v1", 1.0), ("v2", 2.0)):
        lp = base.clone().requires_grad_(True)
        seq = (lp * mask).sum(-1)  # (B, 2)
        old = seq.detach()
        loss, _ = p3o_loss(seq[:, 0], old[:, 0], old[:, 0], seq[:, 1], old[:, 1], old[:, 1],
                           rewards[:, 0], rewards[:, 1], variant=variant, kl_beta=0.0)  # fmt: skip
        loss.backward()
        torch.testing.assert_close(lp.grad, factor * grad_rloo)
