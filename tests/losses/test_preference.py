"""lightning_rlhf.losses.preference: DPO (sigmoid, cDPO, robust, hinge, IPO summed and
length-averaged, SimPO, RPO's SFT term, reference-free) and PRO on
hand-worked numbers (values and gradients derived in the comments), ties, absent candidates,
ordering preference, errors."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.losses.preference import dpo_loss, pro_loss


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _softplus(x: float) -> float:  # -log sigmoid(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


# --- DPO ------------------------------------------------------------------------------------------
# Two pairs, beta = 0.1:
#   pair 0: l_theta(y_w) = -10, l_theta(y_l) = -12, l_ref(y_w) = -11, l_ref(y_l) = -11.5
#           log-ratios 1.0 and -0.5 -> h = 1.5, beta h = 0.15
#   pair 1: l_theta(y_w) = -8, l_theta(y_l) = -7, l_ref both -8 -> ratios 0 and 1, h = -1,
#           beta h = -0.1
# sigmoid: -log sig(0.15) = log(1 + e^-0.15) = 0.620957, -log sig(-0.1) = 0.744397; mean 0.682677
#   d/d l_theta(y_w) = -beta (1 - sig(beta h)) / B: -0.1 * 0.462570 / 2 = -0.0231285,
#   -0.1 * 0.524979 / 2 = -0.0262490; d/d l_theta(y_l) is the negative.
H = [1.5, -1.0]


def _pairs():
    chosen = torch.tensor([-10.0, -8.0], requires_grad=True)
    rejected = torch.tensor([-12.0, -7.0], requires_grad=True)
    ref_chosen = torch.tensor([-11.0, -8.0], requires_grad=True)
    ref_rejected = torch.tensor([-11.5, -8.0], requires_grad=True)
    return chosen, rejected, ref_chosen, ref_rejected


def _value_and_grads(**kwargs):
    chosen, rejected, ref_chosen, ref_rejected = _pairs()
    loss, stats = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, **kwargs)
    g_c, g_r, g_rc, g_rr = torch.autograd.grad(
        loss, (chosen, rejected, ref_chosen, ref_rejected), allow_unused=True
    )
    for g in (g_rc, g_rr):  # the reference never receives a gradient
        assert g is None or not g.any()
    return loss.item(), g_c.tolist(), g_r.tolist(), stats


def test_dpo_sigmoid_worked_pair():
    loss, g_c, g_r, stats = _value_and_grads(beta=0.1)
    assert loss == pytest.approx((_softplus(-0.15) + _softplus(0.1)) / 2, abs=1e-6)
    assert loss == pytest.approx(0.682677, abs=1e-6)
    expected = [-0.1 * (1 - _sig(0.1 * h)) / 2 for h in H]  # [-0.0231285, -0.0262490]
    assert g_c == pytest.approx(expected, abs=1e-7)
    assert g_r == pytest.approx([-g for g in expected], abs=1e-7)
    assert stats["accuracy"].item() == 0.5  # h > 0 for pair 0 only
    assert stats["margin"].item() == pytest.approx(0.1 * 0.25)  # beta * mean(h)
    assert stats["chosen_reward"].item() == pytest.approx(0.1 * 0.5)  # beta * mean(1.0, 0)
    assert stats["rejected_reward"].item() == pytest.approx(0.1 * 0.25)  # beta * mean(-0.5, 1)


def test_cdpo_label_smoothing_worked_pair():
    # (1 - ls) * -log sig(z) + ls * -log sig(-z), ls = 0.1:
    #   pair 0: 0.9 * 0.620957 + 0.1 * 0.770957 = 0.635957
    #   pair 1: 0.9 * 0.744397 + 0.1 * 0.644397 = 0.734397; mean 0.685177
    # d/d l_theta(y_w) = beta (sig(z) - (1 - ls)) / B: 0.05 * (0.537430 - 0.9) = -0.0181285,
    #   0.05 * (0.475021 - 0.9) = -0.0212490
    loss, g_c, g_r, _ = _value_and_grads(beta=0.1, label_smoothing=0.1)
    assert loss == pytest.approx(0.685177, abs=1e-6)
    expected = [0.05 * (_sig(0.1 * h) - 0.9) for h in H]
    assert g_c == pytest.approx(expected, abs=1e-7)
    assert g_c == pytest.approx([-0.0181285, -0.0212490], abs=1e-6)
    assert g_r == pytest.approx([-g for g in expected], abs=1e-7)


def test_ipo_worked_pair():
    # (h - 1 / (2 beta))^2 = (h - 5)^2: 12.25 and 36 -> mean 24.125;
    # d/d l_theta(y_w) = 2 (h - 5) / B = [-3.5, -6.0]
    loss, g_c, g_r, _ = _value_and_grads(beta=0.1, loss_type="ipo")
    assert loss == pytest.approx(24.125, abs=1e-5)
    assert g_c == pytest.approx([-3.5, -6.0], abs=1e-5)
    assert g_r == pytest.approx([3.5, 6.0], abs=1e-5)


def test_dpo_reference_free_worked_pair():
    # h = l_theta(y_w) - l_theta(y_l) = [2, -1]: (-log sig(0.2) - log sig(-0.1)) / 2
    # = (0.598139 + 0.744397) / 2 = 0.671268; implicit rewards beta * l_theta.
    chosen, rejected, _, _ = _pairs()
    loss, stats = dpo_loss(chosen, rejected, None, None, beta=0.1, reference_free=True)
    assert loss.item() == pytest.approx(0.671268, abs=1e-6)
    (g_c,) = torch.autograd.grad(loss, chosen)
    assert g_c.tolist() == pytest.approx([-0.05 * (1 - _sig(0.2)), -0.05 * (1 - _sig(-0.1))])
    assert stats["chosen_reward"].item() == pytest.approx(0.1 * -9.0)
    # Passing references with reference_free=True ignores them.
    same, _ = dpo_loss(*_pairs(), beta=0.1, reference_free=True)
    assert same.item() == pytest.approx(loss.item())


def test_dpo_errors():
    c, r, rc, rr = _pairs()
    with pytest.raises(ValueError, match="unknown loss_type 'kto'"):
        dpo_loss(c, r, rc, rr, loss_type="kto")
    with pytest.raises(ValueError, match="ref_chosen_logps is None"):
        dpo_loss(c, r, None, rr)
    for loss_type in ("ipo", "hinge"):
        with pytest.raises(ValueError, match=f"label_smoothing applies to .* not '{loss_type}'"):
            dpo_loss(c, r, rc, rr, loss_type=loss_type, label_smoothing=0.1)
    with pytest.raises(ValueError, match="chosen_lengths is None; loss_type='simpo'"):
        dpo_loss(c, r, None, None, loss_type="simpo")
    with pytest.raises(ValueError, match="rejected_lengths is None"):
        dpo_loss(c, r, rc, rr, sft_weight=1.0, chosen_lengths=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="lengths must be > 0"):
        dpo_loss(c, r, rc, rr, length_average=True, chosen_lengths=torch.tensor([1, 0]),
                 rejected_lengths=torch.tensor([1, 1]))  # fmt: skip
    with pytest.raises(ValueError, match=r"chosen_lengths must be \(B,\)"):
        dpo_loss(c, r, rc, rr, length_average=True, chosen_lengths=torch.tensor([1]),
                 rejected_lengths=torch.tensor([1, 1]))  # fmt: skip
    with pytest.raises(ValueError, match=r"rejected_logps must be \(B,\)"):
        dpo_loss(c, r[:1], rc, rr)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(c, r, rc, rr, beta=0.0)


# Token counts for the length-normalised variants: |y_w| = [4, 2], |y_l| = [2, 5].
LENGTHS = {"chosen_lengths": torch.tensor([4, 2]), "rejected_lengths": torch.tensor([2, 5])}


def test_robust_dpo_worked_pair():
    # ((1 - eps) * -log sig(z) - eps * -log sig(-z)) / (1 - 2 eps), eps = 0.1, z = beta h:
    #   pair 0: (0.9 * 0.620957 - 0.1 * 0.770957) / 0.8 = 0.602207
    #   pair 1: (0.9 * 0.744397 - 0.1 * 0.644397) / 0.8 = 0.756897; mean 0.679552
    # d/dz = (-(1 - eps)(1 - sig(z)) - eps sig(z)) / (1 - 2 eps) = sig(z) - (1 - eps) / (1 - 2 eps)
    #   = sig(z) - 1.125 -> d/d l_theta(y_w) = 0.05 * (sig(z) - 1.125) = [-0.0293785, -0.0324990]
    loss, g_c, g_r, _ = _value_and_grads(beta=0.1, label_smoothing=0.1, loss_type="robust")
    assert loss == pytest.approx(0.679552, abs=1e-6)
    assert g_c == pytest.approx([0.05 * (_sig(0.1 * h) - 1.125) for h in H], abs=1e-7)
    assert g_c == pytest.approx([-0.0293785, -0.0324990], abs=1e-7)
    assert g_r == pytest.approx([0.0293785, 0.0324990], abs=1e-7)
    # eps = 0 is plain DPO
    assert _value_and_grads(beta=0.1, loss_type="robust")[0] == pytest.approx(0.682677, abs=1e-6)


def test_robust_dpo_is_unbiased_under_label_flips():
    """The defining property (Chowdhury et al. 2024): averaged over a flip of the pair's label
    with probability eps, the robust loss equals the clean DPO loss, for any h."""
    h = torch.tensor([1.5, -1.0, 7.0, 0.0])
    eps, beta = 0.2, 0.5
    zero = torch.zeros(1)
    for x in h.split(1):  # one pair at a time; -x is the same pair with the labels swapped
        options = dict(beta=beta, loss_type="robust", label_smoothing=eps)
        robust, _ = dpo_loss(x, zero, zero, zero, **options)
        flip, _ = dpo_loss(-x, zero, zero, zero, **options)
        expected = (1 - eps) * robust.item() + eps * flip.item()
        assert expected == pytest.approx(_softplus(-beta * x.item()), abs=1e-6)


def test_hinge_worked_pair():
    # max(0, 1 - beta h): beta = 0.1 -> [0.85, 1.1], mean 0.975, both active: d/d l_w = -beta / B
    loss, g_c, g_r, _ = _value_and_grads(beta=0.1, loss_type="hinge")
    assert loss == pytest.approx(0.975, abs=1e-6)
    assert g_c == pytest.approx([-0.05, -0.05]) and g_r == pytest.approx([0.05, 0.05])
    # beta = 1: pair 0 past the margin (1 - 1.5 < 0: no loss, no gradient), pair 1: 1 + 1 = 2
    loss, g_c, _, _ = _value_and_grads(beta=1.0, loss_type="hinge")
    assert loss == pytest.approx(1.0) and g_c == pytest.approx([0.0, -0.5])


def test_ipo_length_averaged_worked_pair():
    # TRL's IPO divides each l by its token count: ratios chosen [1/4, 0/2], rejected
    # [-0.5/2, 1/5] -> h = [0.5, -0.2]; (h - 5)^2 = [20.25, 27.04], mean 23.645.
    # d/d l_theta(y_w) = 2 (h - 5) / B / |y_w| = [-1.125, -2.6];
    # d/d l_theta(y_l) = -2 (h - 5) / B / |y_l| = [2.25, 1.04]
    loss, g_c, g_r, stats = _value_and_grads(beta=0.1, loss_type="ipo", length_average=True,
                                             **LENGTHS)  # fmt: skip
    assert loss == pytest.approx(23.645, abs=1e-4)
    assert g_c == pytest.approx([-1.125, -2.6], abs=1e-5)
    assert g_r == pytest.approx([2.25, 1.04], abs=1e-5)
    assert stats["margin"].item() == pytest.approx(0.1 * 0.15)  # beta * mean h
    # the paper's sums are the default: lengths are then ignored
    summed = _value_and_grads(beta=0.1, loss_type="ipo", **LENGTHS)[0]
    assert summed == pytest.approx(24.125, abs=1e-5)


def test_simpo_worked_pair():
    # h = l_w / |y_w| - l_l / |y_l| = [-10/4 + 12/2, -8/2 + 7/5] = [3.5, -2.6], no reference;
    # beta = 1, gamma = 0.5: -log sig(h - 0.5) = softplus(-3.0) = 0.048587,
    # softplus(3.1) = 3.144064; mean 1.596326.
    # d/d l_w = -beta (1 - sig(h - gamma)) / B / |y_w| = [-0.00592823, -0.23922319];
    # d/d l_l = +beta (1 - sig(h - gamma)) / B / |y_l| = [0.01185647, 0.09568927]
    loss, g_c, g_r, stats = _value_and_grads(beta=1.0, loss_type="simpo", simpo_gamma=0.5,
                                             **LENGTHS)  # fmt: skip
    assert loss == pytest.approx(1.596326, abs=1e-6)
    assert loss == pytest.approx((_softplus(-3.0) + _softplus(3.1)) / 2, abs=1e-6)
    assert g_c == pytest.approx([-0.00592823, -0.23922319], abs=1e-7)
    assert g_r == pytest.approx([0.01185647, 0.09568927], abs=1e-7)
    assert stats["chosen_reward"].item() == pytest.approx(-3.25)  # beta * mean(-2.5, -4)
    chosen, rejected, _, _ = _pairs()  # reference-free: None references are fine
    none_ref, _ = dpo_loss(chosen, rejected, None, None, beta=1.0, loss_type="simpo", **LENGTHS)
    assert none_ref.item() == pytest.approx(loss, abs=1e-7)


def test_rpo_sft_weight_worked_pair():
    # sigmoid DPO (0.682677) + alpha * NLL, NLL = -sum l(y_w) / sum |y_w| = 18 / 6 = 3;
    # alpha = 0.5 -> 2.182677; d/d l_theta(y_w) gains -alpha / 6 = -0.0833333 per pair.
    loss, g_c, g_r, stats = _value_and_grads(beta=0.1, sft_weight=0.5, **LENGTHS)
    assert loss == pytest.approx(2.182677, abs=1e-6)
    assert stats["sft_loss"].item() == pytest.approx(3.0)
    dpo = [-0.1 * (1 - _sig(0.1 * h)) / 2 for h in H]
    assert g_c == pytest.approx([g - 0.5 / 6 for g in dpo], abs=1e-7)
    assert g_r == pytest.approx([-g for g in dpo], abs=1e-7)
    assert "sft_loss" not in _value_and_grads(beta=0.1)[3]


# --- PRO ------------------------------------------------------------------------------------------
# One prompt, n = 3 candidates, best first, rewards r = [1.0, 0.6, 0.1]:
#   y^1 log-probs [-0.5, -1.5]       l = -2.0, |y| = 2, s^1 = -1.0
#   y^2 log-probs [-0.2, -0.3, -1.0] l = -1.5, |y| = 3, s^2 = -0.5
#   y^3 log-probs [-2.0]             l = -2.0, |y| = 1, s^3 = -2.0
# Step k = 1: 1/T_1^2 = 0.4, 1/T_1^3 = 0.9, 1/T_1^1 = max = 0.9;
#   logits z = [-0.9, -0.2, -1.8]; term = 0.9 + log(e^-0.9 + e^-0.2 + e^-1.8)
#   = 0.9 + log(1.390599) = 1.229735; softmax p = [0.292370, 0.588761, 0.118869]
# Step k = 2: 1/T_2^3 = 0.5 = 1/T_2^2; logits [-0.25, -1.0];
#   term = 0.25 + log(1.146680) = 0.386871; softmax q = [0.679179, 0.320821]
# SFT: beta_sft = 0.05 * (3 - 1)^2 = 0.2, -l(y^1) = 2.0 -> 0.4.  Total 2.016606 (2.0166058).
# Gradient per token of y^i = (d L / d s^i) / |y^i| (+ -beta_sft for y^1's tokens):
#   y^1: 0.9 (p1 - 1) / 2 - 0.2 = -0.518433   (raise the best)
#   y^2: (0.4 p2 + 0.5 (q2 - 1)) / 3 = 0.025031
#   y^3: 0.9 p3 + 0.5 q3 = 0.267393           (lower the worst)


def _ranked(pad: float = 0.0):
    lp = torch.tensor(
        [[[-0.5, -1.5, pad], [-0.2, -0.3, -1.0], [-2.0, pad, pad]]], requires_grad=True
    )
    mask = torch.tensor([[[1, 1, 0], [1, 1, 1], [1, 0, 0]]])
    return lp, mask, torch.tensor([[1.0, 0.6, 0.1]])


def _softmax(xs):
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def test_pro_worked_list_value_and_gradient():
    lp, mask, rewards = _ranked(pad=-9.0)  # junk at padded tokens changes nothing
    loss, stats = pro_loss(lp, mask, rewards)
    step1 = 0.9 + math.log(math.exp(-0.9) + math.exp(-0.2) + math.exp(-1.8))
    step2 = 0.25 + math.log(math.exp(-0.25) + math.exp(-1.0))
    assert step1 == pytest.approx(1.229735, abs=1e-6)
    assert step2 == pytest.approx(0.386871, abs=1e-6)
    assert loss.item() == pytest.approx(step1 + step2 + 0.4, abs=1e-5)
    assert loss.item() == pytest.approx(2.016606, abs=1e-5)
    assert stats["rank_loss"].item() == pytest.approx(step1 + step2, abs=1e-5)
    assert stats["sft_loss"].item() == pytest.approx(2.0)
    assert stats["best_score"].item() == pytest.approx(-1.0)
    assert stats["pair_accuracy"].item() == pytest.approx(2 / 3)  # (1,2) wrong, (1,3), (2,3) right
    p, q = _softmax([-0.9, -0.2, -1.8]), _softmax([-0.25, -1.0])
    g1 = 0.9 * (p[0] - 1) / 2 - 0.2
    g2 = (0.4 * p[1] + 0.5 * (q[0] - 1)) / 3
    g3 = 0.9 * p[2] + 0.5 * q[1]
    assert [g1, g2, g3] == pytest.approx([-0.518433, 0.025031, 0.267393], abs=1e-6)
    (grad,) = torch.autograd.grad(loss, lp)
    expected = torch.tensor([[[g1, g1, 0.0], [g2, g2, g2], [g3, 0.0, 0.0]]])
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=0)


def test_pro_prefers_the_reward_ordering():
    # Equal scores: the ranking gradient raises y^1, lowers y^3 (sft off to isolate it), and
    # scores ordered like the rewards give a lower loss than the reversed order.
    mask = torch.ones(1, 3, 1)
    rewards = torch.tensor([[1.0, 0.6, 0.1]])
    lp = torch.full((1, 3, 1), -1.0, requires_grad=True)
    loss, _ = pro_loss(lp, mask, rewards, sft_weight=0.0)
    (grad,) = torch.autograd.grad(loss, lp)
    assert grad[0, 0, 0] < 0 < grad[0, 2, 0]
    ordered, _ = pro_loss(torch.tensor([[[-1.0], [-2.0], [-3.0]]]), mask, rewards)
    reversed_, _ = pro_loss(torch.tensor([[[-3.0], [-2.0], [-1.0]]]), mask, rewards)
    assert ordered.item() < reversed_.item()


def test_pro_ties_leave_the_tied_candidate_out():
    # r = [1.0, 1.0, 0.2], s = [-1, -2, -3] (one token each).
    # Step 1: y^2 is tied with y^1 -> left out; 1/T_1^3 = 0.8 = 1/T_1^1:
    #   log(1 + e^(-2.4 + 0.8)) = log(1 + e^-1.6) = 0.183901
    # Step 2: 1/T_2^3 = 0.8: log(1 + e^(-2.4 + 1.6)) = log(1 + e^-0.8) = 0.371101
    # SFT 0.05 * 4 * 1.0 = 0.2; total 0.755001.
    lp = torch.tensor([[[-1.0], [-2.0], [-3.0]]])
    loss, _ = pro_loss(lp, torch.ones(1, 3, 1), torch.tensor([[1.0, 1.0, 0.2]]))
    assert loss.item() == pytest.approx(_softplus(-1.6) + _softplus(-0.8) + 0.2, abs=1e-6)
    assert loss.item() == pytest.approx(0.755001, abs=1e-6)
    # All tied: no ranking signal at all, finite, and only the SFT term moves y^1.
    lp = lp.clone().requires_grad_(True)
    loss, stats = pro_loss(lp, torch.ones(1, 3, 1), torch.ones(1, 3))
    assert stats["rank_loss"].item() == 0.0
    (grad,) = torch.autograd.grad(loss, lp)
    torch.testing.assert_close(grad, torch.tensor([[[-0.2], [0.0], [0.0]]]))


def test_pro_absent_candidates_and_batch_mean():
    # Prompt 0: the worked list. Prompt 1: two candidates + one absent (junk, -inf reward):
    # equals the same list with N = 2: s = [-1/1, -3/2] = [-1, -1.5], 1/T = 0.9 - 0.4 = 0.5,
    # log(1 + e^(0.5 (s^2 - s^1))) = log(1 + e^-0.25) = 0.575939, plus 0.05 * 1 * 1.0 = 0.05
    # -> 0.625939.
    lp, mask, rewards = _ranked()
    lp2 = torch.tensor([[[-1.0, 0.0, 0.0], [-1.5, -1.5, 0.0], [5.0, 5.0, 5.0]]])
    mask2 = torch.tensor([[[1, 0, 0], [1, 1, 0], [0, 0, 0]]])
    present = torch.tensor([[True, True, True], [True, True, False]])
    loss, _ = pro_loss(
        torch.cat([lp.detach(), lp2]),
        torch.cat([mask, mask2]),
        torch.tensor([[1.0, 0.6, 0.1], [0.9, 0.4, math.inf]]),
        candidate_mask=present,
    )
    second = _softplus(-0.25) + 0.05
    assert second == pytest.approx(0.625939, abs=1e-6)
    assert loss.item() == pytest.approx((2.016606 + second) / 2, abs=1e-5)
    alone, _ = pro_loss(lp2[:, :2], mask2[:, :2], torch.tensor([[0.9, 0.4]]))
    assert alone.item() == pytest.approx(second, abs=1e-6)


def test_pro_sft_weight_override():
    lp, mask, rewards = _ranked()
    rank = 2.016606 - 0.4
    assert pro_loss(lp, mask, rewards, sft_weight=0.0)[0].item() == pytest.approx(rank, abs=1e-5)
    with_sft, _ = pro_loss(lp, mask, rewards, sft_weight=1.0)
    assert with_sft.item() == pytest.approx(rank + 2.0, abs=1e-5)


def test_pro_errors_name_the_row():
    lp, mask, rewards = _ranked()
    with pytest.raises(ValueError, match="row 0: candidate 2 has an empty mask"):
        pro_loss(lp, torch.cat([mask[:, :2], torch.zeros(1, 1, 3, dtype=mask.dtype)], 1), rewards)
    with pytest.raises(ValueError, match="row 0: candidate 1 has a non-finite reward"):
        pro_loss(lp, mask, torch.tensor([[1.0, math.nan, 0.1]]))
    with pytest.raises(ValueError, match="row 0: rewards are not best first: candidate 2"):
        pro_loss(lp, mask, torch.tensor([[1.0, 0.6, 0.7]]))
    with pytest.raises(ValueError, match=r"rewards must be \(B, N\)"):
        pro_loss(lp, mask, rewards[:, :2])
    with pytest.raises(ValueError, match="row 0 has no candidates"):
        pro_loss(lp, mask, rewards, candidate_mask=torch.zeros(1, 3, dtype=torch.bool))
