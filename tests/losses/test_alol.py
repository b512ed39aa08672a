"""lightning_rlhf.losses.alol: every A-LoL variant on losses/README.md §2's worked check (values and
gradient coefficients derived by hand below), the clamp bounding without zeroing, stats, errors."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.losses.alol import VARIANTS, alol_loss, clamped_importance_weight
from tests.losses.reference import clamped_importance_weight_ref

# The worked check (B = 2, T = 3, row 1 padded at t = 2):
#   log pi_theta = [[-1.0, -0.5, -2.0], [-0.3, -1.2, pad]]   l_theta = [-3.5, -1.5]
#   log pi_ref   = [[-1.2, -0.4, -2.5], [-0.2, -1.0, pad]]   l_ref   = [-4.1, -1.2]
#   R = [0.8, 0.6], V = [0.5, 0.7]  ->  A = [0.3, -0.1], A+ = [0.3, 0.0]
#   rho_seq = exp(l_theta - l_ref) = [exp(0.6), exp(-0.3)] = [1.822119, 0.740818], both inside
#   [0.1, 1.9] (eps 0.9); rho_t row 0 = [exp(0.2), exp(-0.1), exp(0.5)]
#   = [1.221403, 0.904837, 1.648721]; pi_theta(y_t) = exp(log pi_theta), all above u = 0.1.
E = math.exp
RHO0, RHO1 = E(0.6), E(-0.3)
RHO_T0 = [E(0.2), E(-0.1), E(0.5)]
P0, P1 = [E(-1.0), E(-0.5), E(-2.0)], [E(-0.3), E(-1.2)]
LP0 = [-1.0, -0.5, -2.0]

# Expected batch losses, mean over the two sequences:
EXPECTED_LOSS = {
    # (3.5 + 1.5) / 2
    "nll": 2.5,
    # (0.8 * 3.5 + 0.6 * 1.5) / 2 = (2.8 + 0.9) / 2
    "wbc": 1.85,
    # -R_b * sum_t p_t * lp_t: row 0 0.8 * (0.367879 + 0.303265 + 0.270671) = 0.753452,
    # row 1 0.6 * (0.222245 + 0.361433) = 0.350207; mean 0.551830
    "r_gold": (-0.8 * sum(p * lp for p, lp in zip(P0, LP0)) - 0.6 * (P1[0] * -0.3 + P1[1] * -1.2))
    / 2,
    # (0.8 * 1.822119 * 3.5 + 0.6 * 0.740818 * 1.5) / 2 = (5.101933 + 0.666736) / 2 = 2.884335
    "r_lol": (0.8 * RHO0 * 3.5 + 0.6 * RHO1 * 1.5) / 2,
    # (0.3 * 1.822119 * 3.5 + 0) / 2 = 0.956612
    "a_lol": 0.3 * RHO0 * 3.5 / 2,
    # (0.3 * 3.5 + 0) / 2
    "a_lol_ref_free": 0.525,
    # -0.3 * (1.221403 * -1.0 + 0.904837 * -0.5 + 1.648721 * -2.0) / 2 = 0.3 * 4.971264 / 2
    "a_lol_seq": -0.3 * sum(r * lp for r, lp in zip(RHO_T0, LP0)) / 2,
    # row 0: 0.3 * 3.5 + 0.1 * (-3.5 + 4.1) = 1.11; row 1: 0 + 0.1 * (-1.5 + 1.2) = -0.03
    "a_lol_kl": 0.54,
}

# d loss / d log pi_theta(y_t) = -c_bt / B (B = 2); 0 at the pad.
EXPECTED_GRAD = {
    "nll": [[-0.5] * 3, [-0.5, -0.5, 0.0]],
    "wbc": [[-0.4] * 3, [-0.3, -0.3, 0.0]],  # -R_b / 2
    "r_gold": [[-0.4 * p for p in P0], [-0.3 * p for p in P1] + [0.0]],  # -R_b max(p, u) / 2
    "r_lol": [[-0.4 * RHO0] * 3, [-0.3 * RHO1] * 2 + [0.0]],  # -R_b rho_b / 2
    "a_lol": [[-0.15 * RHO0] * 3, [0.0] * 3],  # -A+_b rho_b / 2
    "a_lol_ref_free": [[-0.15] * 3, [0.0] * 3],  # -A+_b / 2
    "a_lol_seq": [[-0.15 * r for r in RHO_T0], [0.0] * 3],  # -A+_b rho_t / 2
    "a_lol_kl": [[-0.1] * 3, [0.05, 0.05, 0.0]],  # -(A+_b - beta) / 2 = -(0.3-0.1)/2, +0.1/2
}


def _worked(pad_value: float = 0.0):
    lp = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, pad_value]], requires_grad=True)
    ref = torch.tensor([[-1.2, -0.4, -2.5], [-0.2, -1.0, pad_value]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return lp, ref, mask, torch.tensor([0.8, 0.6]), torch.tensor([0.5, 0.7])


def test_every_variant_is_covered():
    assert set(VARIANTS) == set(EXPECTED_LOSS) == set(EXPECTED_GRAD)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_worked_check_value_and_gradient(variant):
    # A junk pad value must change nothing: padded positions are masked out.
    lp, ref, mask, rewards, values = _worked(pad_value=-7.0)
    loss, stats = alol_loss(lp, ref, mask, rewards, values, variant=variant, kl_beta=0.1)
    assert loss.item() == pytest.approx(EXPECTED_LOSS[variant], abs=1e-6)
    assert stats["loss"].item() == pytest.approx(EXPECTED_LOSS[variant], abs=1e-6)
    (grad,) = torch.autograd.grad(loss, lp)
    torch.testing.assert_close(grad, torch.tensor(EXPECTED_GRAD[variant]), atol=1e-6, rtol=0)


def test_ref_free_variants_run_without_reference():
    lp, _, mask, rewards, values = _worked()
    for variant in ("nll", "wbc", "r_gold"):
        loss, _ = alol_loss(lp, None, mask, rewards, None, variant=variant)
        assert loss.item() == pytest.approx(EXPECTED_LOSS[variant], abs=1e-6)
    loss, _ = alol_loss(lp, None, mask, rewards, values, variant="a_lol_ref_free")
    assert loss.item() == pytest.approx(0.525, abs=1e-6)


def test_r_gold_floor_applies_below_u():
    # p = exp(-3) = 0.0498 < u = 0.1 -> weight 0.1; p = exp(-0.1) = 0.9048 kept.
    # loss = -1.0 * (0.1 * -3 + 0.904837 * -0.1) = 0.390484; grad = [-0.1, -0.904837].
    lp = torch.tensor([[-3.0, -0.1]], requires_grad=True)
    loss, _ = alol_loss(lp, None, torch.ones(1, 2), torch.tensor([1.0]), None, variant="r_gold")
    assert loss.item() == pytest.approx(0.3 + 0.1 * E(-0.1), abs=1e-6)
    (grad,) = torch.autograd.grad(loss, lp)
    torch.testing.assert_close(grad, torch.tensor([[-0.1, -E(-0.1)]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", ["r_lol", "a_lol", "a_lol_seq"])
def test_clamp_bounds_the_weight_and_keeps_the_gradient(variant):
    # log-ratio +2 per token (rho = e^2 = 7.39, e^4 per sequence) -> weight clamped to 1 + eps
    # = 1.9; log-ratio -3 per token (rho = e^-3 = 0.0498, e^-6 per sequence) -> clamped to 0.1.
    # Gradient = -coef * w / B with the bound as w: never 0 (unlike PPO's min at the bound).
    lp = torch.tensor([[-1.0, -1.0], [-4.0, -4.0]], requires_grad=True)
    ref = torch.tensor([[-3.0, -3.0], [-1.0, -1.0]])
    rewards, values = torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.5])
    loss, stats = alol_loss(lp, ref, torch.ones(2, 2), rewards, values, variant=variant)
    coef = 1.0 if variant == "r_lol" else 0.5  # R or A+
    (grad,) = torch.autograd.grad(loss, lp)
    expected = torch.tensor([[-coef * 1.9 / 2] * 2, [-coef * 0.1 / 2] * 2])
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=0)
    assert stats["clip_frac"].item() == 1.0
    assert stats["importance_weight"].item() == pytest.approx(1.0, abs=1e-6)  # (1.9 + 0.1) / 2


def test_weights_are_detached_from_the_reference():
    lp, ref, mask, rewards, values = _worked()
    ref.requires_grad_(True)
    for variant in ("r_lol", "a_lol", "a_lol_seq", "a_lol_kl"):
        loss, _ = alol_loss(lp, ref, mask, rewards, values, variant=variant, kl_beta=0.1)
        (grad_ref,) = torch.autograd.grad(loss, ref, allow_unused=True)
        assert grad_ref is None or not grad_ref.any()


def test_advantages_are_not_normalised():
    # Scaling R and V by 10 scales A+ and so the loss by 10 (no whitening of A).
    lp, ref, mask, rewards, values = _worked()
    base, _ = alol_loss(lp, ref, mask, rewards, values, variant="a_lol")
    scaled, _ = alol_loss(lp, ref, mask, 10 * rewards, 10 * values, variant="a_lol")
    assert scaled.item() == pytest.approx(10 * base.item(), rel=1e-6)


def test_stats_on_the_worked_check():
    lp, ref, mask, rewards, values = _worked()
    _, stats = alol_loss(lp, ref, mask, rewards, values, variant="a_lol")
    assert stats["logprob"].item() == pytest.approx(-2.5)  # (-3.5 - 1.5) / 2
    assert stats["advantage"].item() == pytest.approx(0.1)  # (0.3 - 0.1) / 2
    assert stats["positive_frac"].item() == 0.5
    assert stats["importance_weight"].item() == pytest.approx((RHO0 + RHO1) / 2, abs=1e-6)
    assert stats["clip_frac"].item() == 0.0
    assert stats["weight"].item() == pytest.approx(0.3 * RHO0 / 2, abs=1e-6)  # (A+ rho) mean
    assert all(not v.requires_grad for v in stats.values())
    _, stats = alol_loss(lp, ref, mask, rewards, values, variant="a_lol_seq")
    # token mean over the 5 valid tokens: (sum RHO_T0 + e^0.1 + e^0.2) / 5
    token_mean = (sum(RHO_T0) + E(-0.1) + E(-0.2)) / 5
    assert stats["importance_weight"].item() == pytest.approx(token_mean, abs=1e-6)


def test_errors_are_one_line_and_say_what():
    lp, ref, mask, rewards, values = _worked()
    with pytest.raises(ValueError, match=r"unknown variant 'ppo'.*'a_lol_kl'"):
        alol_loss(lp, ref, mask, rewards, values, variant="ppo")
    with pytest.raises(ValueError, match="'a_lol' needs ref_logprobs"):
        alol_loss(lp, None, mask, rewards, values, variant="a_lol")
    with pytest.raises(ValueError, match="'a_lol_ref_free' needs values"):
        alol_loss(lp, None, mask, rewards, None, variant="a_lol_ref_free")
    with pytest.raises(ValueError, match=r"rewards must be \(2,\)"):
        alol_loss(lp, ref, mask, rewards[:1], values, variant="wbc")
    with pytest.raises(ValueError, match="row 1 has an empty mask"):
        alol_loss(lp, ref, torch.tensor([[1, 0, 0], [0, 0, 0]]), rewards, values, variant="nll")
    with pytest.raises(ValueError, match="row 0 has a non-finite reward"):
        alol_loss(lp, ref, mask, torch.tensor([math.nan, 0.6]), values, variant="wbc")
    with pytest.raises(ValueError, match="row 1 has a NaN/inf value"):
        alol_loss(lp, ref, mask, rewards, torch.tensor([0.5, math.inf]), variant="a_lol")


# --- A-LoL clamped importance weights ----------------------------------------------------------


def test_clamped_importance_weight_alol_worked_check():
    """losses/README.md §2: l_theta - l_ref = [0.2, -0.1] sequence-wise (row 1 has a pad token)."""
    lp = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, 5.0]])
    ref = torch.tensor([[-1.2, -0.4, -2.5], [-0.2, -1.0, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    seq = clamped_importance_weight(lp, ref, mask)
    torch.testing.assert_close(seq, torch.tensor([math.exp(0.6), math.exp(-0.3)]))
    tok = clamped_importance_weight(lp, ref, mask, level="token", clip_eps=0.1)
    want = torch.tensor([[1.1, math.exp(-0.1), 1.1], [math.exp(-0.1), 0.9, 0.0]])
    torch.testing.assert_close(tok, want)


@pytest.mark.parametrize("level", ["sequence", "token"])
def test_clamped_importance_weight_matches_reference(level):
    g = torch.Generator().manual_seed(6)
    lp = -torch.rand(3, 17, generator=g) * 3
    old = lp + 0.3 * torch.randn(3, 17, generator=g)
    mask = (torch.rand(3, 17, generator=g) > 0.2).long()
    w = clamped_importance_weight(lp, old, mask, clip_eps=0.5, level=level)
    assert not w.requires_grad
    torch.testing.assert_close(w, clamped_importance_weight_ref(lp, old, mask, clip_eps=0.5,
                                                                level=level))
    assert w.min() >= 0.0 and w.max() <= 1.5
