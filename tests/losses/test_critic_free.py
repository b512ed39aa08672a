"""RLOO, ReMax and GRPO advantages, REINFORCE and GRPO losses by hand (value and gradient), RLOO
with K = 2 giving exactly P3O's on-policy pairwise gradient, and GRPO's options by hand: the four
reductions (DAPO's across accumulation), batch-scaled rewards, asymmetric clipping, the ratio cap
delta, GSPO's sequence ratio, the entropy bonus, truncated / zero-variance rows, errors."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.losses.critic_free import (
    ZeroVarianceWatch,
    accumulation_weights,
    grpo_advantages,
    grpo_loss,
    loss_rows,
    reinforce_loss,
    remax_advantages,
    rloo_advantages,
    truncated_rows,
    zero_variance_groups,
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
    torch.testing.assert_close(grpo_advantages(r, scale="none"), r - r.mean(1, keepdim=True))


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
    loss, stats = grpo_loss(lp, old, ref, adv, mask, clip_low=eps, beta=beta)
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


# --- GRPO options -----------------------------------------------------------------------------
# The worked example above: per-token values v_bt (surrogate + beta k3) over a (2, 3) mask with
# 3 + 2 valid tokens. The reductions differ only in how the v_bt are averaged.


def _worked_example():
    lp = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, 5.0]], requires_grad=True)
    old = torch.tensor([[-1.1, -0.5, -1.8], [-0.3, -0.8, 0.0]])
    ref = torch.tensor([[-1.2, -0.4, -2.5], [-0.2, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return lp, old, ref, mask, torch.tensor([1.0, -0.5])


def _per_token(lp, old, ref, mask, adv, beta=0.04, low=0.2, high=0.2, delta=None):
    """(2, 3) value and d/d lp of each token's surrogate + beta k3, from the formulas."""
    values, grads = torch.zeros(2, 3), torch.zeros(2, 3)
    for b, t in mask.nonzero().tolist():
        x, o, r, a = lp[b, t].item(), old[b, t].item(), ref[b, t].item(), adv[b].item()
        rho = math.exp(x - o)
        capped = rho if delta is None else min(rho, delta)
        unclipped, clipped = -a * capped, -a * min(max(rho, 1 - low), 1 + high)
        values[b, t] = max(unclipped, clipped) + beta * (math.exp(r - x) - (r - x) - 1)
        d_policy = -a * rho if unclipped >= clipped and capped == rho else 0.0
        grads[b, t] = d_policy + beta * (1 - math.exp(r - x))
    return values, grads


@pytest.mark.parametrize("reduction", ["token_mean", "seq_mean", "constant", "global_token_mean"])
def test_grpo_reductions_by_hand(reduction):
    # token_mean / global_token_mean: sum / 5 tokens; seq_mean: (row0 sum / 3 + row1 sum / 2) / 2;
    # constant (Dr. GRPO): sum / (B * max_tokens) = sum / (2 * 8)
    lp, old, ref, mask, adv = _worked_example()
    values, grads = _per_token(lp, old, ref, mask, adv)
    weights = {
        "token_mean": torch.full((2, 3), 1 / 5),
        "global_token_mean": torch.full((2, 3), 1 / 5),
        "seq_mean": torch.tensor([[1 / 6] * 3, [1 / 4] * 3]),
        "constant": torch.full((2, 3), 1 / 16),
    }[reduction] * mask
    loss, _ = grpo_loss(lp, old, ref, adv, mask, reduction=reduction, max_tokens=8)
    assert loss.item() == pytest.approx((values * weights).sum().item(), rel=1e-6)
    loss.backward()
    torch.testing.assert_close(lp.grad, grads * weights)


def test_dapo_global_token_mean_across_accumulation():
    """Two minibatches of 3 and 1 valid tokens: weighted by token shares (3/4, 1/4) their token
    means sum to the token mean of the whole batch (row shares, 1/2 each, would not)."""
    lp, old, ref, _, adv = _worked_example()
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    weights = accumulation_weights([mask[:1], mask[1:]], "global_token_mean")
    assert weights == [0.75, 0.25]
    assert accumulation_weights([mask[:1], mask[1:]], "token_mean") == [0.5, 0.5]
    assert accumulation_weights([mask[:1] * 0, mask[1:] * 0], "global_token_mean") == [0.0, 0.0]
    parts = [
        grpo_loss(lp[i : i + 1], old[i : i + 1], ref[i : i + 1], adv[i : i + 1], mask[i : i + 1],
                  reduction="global_token_mean")[0]
        for i in range(2)
    ]  # fmt: skip
    accumulated = weights[0] * parts[0] + weights[1] * parts[1]
    whole, _ = grpo_loss(lp, old, ref, adv, mask, reduction="token_mean")
    torch.testing.assert_close(accumulated, whole)
    g_acc = torch.autograd.grad(accumulated, lp)[0]
    torch.testing.assert_close(g_acc, torch.autograd.grad(whole, lp)[0])
    values, grads = _per_token(lp, old, ref, mask, adv)
    assert whole.item() == pytest.approx(values.sum().item() / 4, rel=1e-6)


def test_asymmetric_clip_by_hand():
    # one token, A = 1, rho = e^0.24 = 1.271249: clip-higher 0.28 leaves it unclipped
    # (loss -1.271249, gradient -rho / 1); symmetric 0.2 clips it at 1.2 (gradient 0).
    lp = torch.tensor([[0.24]], requires_grad=True)
    zero, one, mask = torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1)
    loss, stats = grpo_loss(lp, zero, lp.detach(), one, mask, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(-math.exp(0.24), rel=1e-6)
    assert torch.autograd.grad(loss, lp)[0].item() == pytest.approx(-math.exp(0.24), rel=1e-6)
    assert stats["clip_frac"].item() == 0.0
    loss, stats = grpo_loss(lp, zero, lp.detach(), one, mask, clip_low=0.2)
    assert loss.item() == pytest.approx(-1.2) and stats["clip_frac"].item() == 1.0
    assert torch.autograd.grad(loss, lp)[0].item() == 0.0
    # and at the low end: A = -1, rho = e^-0.24 = 0.786628: clip_low 0.2 holds it at 0.8
    loss, _ = grpo_loss(-lp, zero, -lp.detach(), -one, mask, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(0.8)


def test_delta_caps_the_ratio_of_negative_advantages():
    # A = -1 on three tokens with rho = e^1.5 = 4.481689, e^0.5 = 1.648721, e^0 = 1; delta = 2:
    #   token 0: max(min(rho, 2), clip(rho)) = 2 (capped: no gradient); without delta 4.481689
    #   token 1: rho = 1.648721 < delta: unchanged, gradient rho; token 2: 1, gradient 1
    # token_mean: (2 + 1.648721 + 1) / 3 = 1.549574; gradient [0, 1.648721, 1] / 3
    lp = torch.tensor([[1.5, 0.5, 0.0]], requires_grad=True)
    zero, mask, adv = torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([-1.0])
    loss, stats = grpo_loss(lp, zero, lp.detach(), adv, mask, delta=2.0)
    assert loss.item() == pytest.approx((2 + math.exp(0.5) + 1) / 3, rel=1e-6)
    grad = torch.autograd.grad(loss, lp)[0]
    torch.testing.assert_close(grad, torch.tensor([[0.0, math.exp(0.5) / 3, 1 / 3]]))
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    uncapped, _ = grpo_loss(lp, zero, lp.detach(), adv, mask)
    assert uncapped.item() == pytest.approx((math.exp(1.5) + math.exp(0.5) + 1) / 3, rel=1e-6)
    # the worked example against the per-token formulas, delta = 1.3: token (1, 1) gets
    # rho = e^0.6 = 1.822119 with A = -0.5: 0.5 * 1.3 = 0.65 (capped, no gradient), not 0.911059
    lp, old, ref, mask, adv = _worked_example()
    old[1, 1] = -1.8
    values, grads = _per_token(lp, old, ref, mask, adv, delta=1.3)
    assert values[1, 1].item() == pytest.approx(0.65 + 0.04 * (math.exp(0.2) - 0.2 - 1))
    assert grads[1, 1].item() == pytest.approx(0.04 * (1 - math.exp(0.2)))
    loss, _ = grpo_loss(lp, old, ref, adv, mask, delta=1.3)
    assert loss.item() == pytest.approx(values.sum().item() / 5, rel=1e-6)
    torch.testing.assert_close(torch.autograd.grad(loss, lp)[0], grads / 5)


def test_gspo_sequence_ratio_by_hand():
    # row 0: log-ratios [0.1, 0.3] -> s = e^0.2 = 1.221403 (> 1.2: clipped for A = 1);
    # row 1: log-ratios [-0.1, 0.0, 0.04] -> s = e^-0.02 = 0.980199, A = -2: unclipped.
    # seq_mean: (-1.2 + 2 * 0.980199) / 2 = 0.380199; d/d lp of row 1's tokens:
    # (1/2) * 2 * s / 3 = 0.326733 each (the sequence ratio's gradient spreads evenly), row 0: 0
    lp = torch.tensor([[0.1, 0.3, 0.0], [-0.1, 0.0, 0.04]], requires_grad=True)
    zero = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -2.0])
    loss, stats = grpo_loss(lp, zero, lp.detach(), adv, mask, reduction="seq_mean",
                            ratio_level="sequence")  # fmt: skip
    s1 = math.exp(-0.02)
    assert loss.item() == pytest.approx((-1.2 + 2 * s1) / 2, rel=1e-6)
    grad = torch.autograd.grad(loss, lp)[0]
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, 0.0], [s1 / 3] * 3]))
    assert stats["ratio_max"].item() == pytest.approx(math.exp(0.2), rel=1e-6)
    # the token-level ratio of the same data differs (row 0 token 0, e^0.1, is not clipped)
    token, _ = grpo_loss(lp, zero, lp.detach(), adv, mask, reduction="seq_mean")
    assert token.item() != pytest.approx(loss.item())


def test_entropy_bonus_by_hand():
    # loss - c * token_mean(H): H = [[1, 2, 3], [4, 5, 9]] over the 5 valid tokens -> 3.0;
    # c = 0.1 lowers the loss by 0.3, d/dH = -c / 5 at valid tokens
    lp, old, ref, mask, adv = _worked_example()
    entropy = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]], requires_grad=True)
    base, _ = grpo_loss(lp, old, ref, adv, mask)
    loss, stats = grpo_loss(lp, old, ref, adv, mask, entropy=entropy, entropy_coef=0.1)
    assert loss.item() == pytest.approx(base.item() - 0.3, rel=1e-6)
    assert stats["entropy"].item() == pytest.approx(3.0)
    torch.testing.assert_close(torch.autograd.grad(loss, entropy)[0], -0.02 * mask.float())


def test_batch_scaled_advantages_and_std_eps():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [3.0, 1.0, 2.0, 2.0]])
    # all 12 rewards: mean 1, squared deviations 9 -> unbiased std sqrt(9 / 11) = 0.904534
    std = math.sqrt(9 / 11)
    centred = r - r.mean(1, keepdim=True)
    torch.testing.assert_close(grpo_advantages(r, eps=1e-4, scale="batch"), centred / (std + 1e-4))
    s = math.sqrt(1 / 3)
    assert grpo_advantages(r, eps=1e-4)[0, 0].item() == pytest.approx(0.5 / (s + 1e-4), rel=1e-6)
    with pytest.raises(ValueError, match="scale must be one of"):
        grpo_advantages(r, scale="rank")


def test_rows_left_out_of_the_loss():
    eos = 2
    ids = torch.tensor([[5, 2, 0], [5, 6, 7], [2, 0, 0], [5, 6, 2]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    assert truncated_rows(ids, mask, eos).tolist() == [False, True, False, False]
    ids_outside = torch.tensor([[5, 6, 2]])  # an EOS outside the mask does not count
    assert truncated_rows(ids_outside, torch.tensor([[1, 1, 0]]), eos).tolist() == [True]
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0])  # groups of 2: [1, 1] equal, [0, 1] not
    assert zero_variance_groups(rewards.view(2, 2)).tolist() == [True, False]
    both = loss_rows(ids, mask, rewards, 2, eos, mask_truncated=True, drop_zero_variance=True)
    assert both.tolist() == [False, False, True, True]
    assert loss_rows(ids, mask, rewards, 2, eos, mask_truncated=True).tolist() == [
        True, False, True, True
    ]  # fmt: skip
    assert loss_rows(ids, mask, rewards, 2, eos).all()


def test_zero_variance_watch_warns_once_after_a_streak():
    watch = ZeroVarianceWatch(patience=2)
    seen = [watch.update(x) for x in (True, False, True, True, True, True)]
    assert seen == [False, False, False, True, False, False] and watch.streak == 4
    never = ZeroVarianceWatch(patience=None)
    assert not any(never.update(True) for _ in range(10))


def test_grpo_option_errors():
    lp, old, ref, mask, adv = _worked_example()
    cases = [
        ({"reduction": "sum"}, "reduction must be one of"),
        ({"reduction": "constant"}, "reduction='constant' needs max_tokens"),
        ({"ratio_level": "segment"}, "ratio_level must be one of"),
        ({"delta": 1.1}, r"delta must be > 1 \+ clip_high = 1.2"),
        ({"clip_low": 1.0}, "need 0 <= clip_low < 1"),
        ({"entropy_coef": 0.1}, "entropy_coef > 0 needs entropy"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            grpo_loss(lp, old, ref, adv, mask, **kwargs)
