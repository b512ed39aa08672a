"""KL estimators by hand, PPO token rewards on left/right-padded rows and the KL controllers."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.losses.kl import kl_penalty, sequence_kl
from lightning_rlhf.rl.kl import AdaptiveKLController, FixedKLController, token_level_rewards

LP = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, 7.0]])
REF = torch.tensor([[-1.2, -0.4, -2.5], [-0.2, -1.0, 9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_kinds_by_hand(kind):
    formulas = {
        "k1": lambda lp, ref: lp - ref,
        "k2": lambda lp, ref: 0.5 * (lp - ref) ** 2,
        "k3": lambda lp, ref: math.exp(ref - lp) - (ref - lp) - 1,
    }
    want = torch.zeros(2, 3)
    for b in range(2):
        for t in range(3):
            if MASK[b, t]:
                want[b, t] = formulas[kind](LP[b, t].item(), REF[b, t].item())
    got = kl_penalty(LP, REF, MASK, kind)
    torch.testing.assert_close(got, want)
    assert got[1, 2] == 0  # masked garbage never leaks
    if kind == "k1":
        torch.testing.assert_close(got[0], torch.tensor([0.2, -0.1, 0.5]))
    if kind == "k3":
        assert bool((got >= 0).all())


def test_k3_gradient_by_hand():
    lp = LP.clone().requires_grad_(True)
    kl_penalty(lp, REF, MASK, "k3").sum().backward()
    want = (1 - torch.exp(REF - LP)) * MASK  # d/dlp [exp(ref - lp) - (ref - lp) - 1]
    torch.testing.assert_close(lp.grad, want)


def test_sequence_kl_is_masked_sum_of_k1():
    torch.testing.assert_close(sequence_kl(LP, REF, MASK), torch.tensor([0.6, -0.3]))


def test_kl_errors():
    with pytest.raises(ValueError, match="kind"):
        kl_penalty(LP, REF, MASK, "k4")
    with pytest.raises(ValueError, match="ref_logprobs"):
        kl_penalty(LP, REF[:, :2], MASK)


def test_token_level_rewards_score_on_last_token_left_and_right_padding():
    lp = torch.tensor([[-1.0, -0.5, -2.0, 0.0], [0.0, -0.3, -1.2, -0.7], [0.0] * 4])
    ref = torch.tensor([[-1.2, -0.4, -2.5, 3.0], [5.0, -0.2, -1.0, -0.7], [0.0] * 4])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])  # right, left, empty
    scores = torch.tensor([1.0, 2.0, 3.0])
    got = token_level_rewards(scores, lp, ref, mask, beta=0.1)
    want = torch.tensor(
        [
            [-0.02, 0.01, -0.05 + 1.0, 0.0],
            [0.0, 0.01, 0.02, -0.0 + 2.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="scores"):
        token_level_rewards(scores[:2], lp, ref, mask, beta=0.1)


def test_adaptive_controller_moves_beta_the_right_way_and_round_trips():
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=1000)
    ctl.update(12.0, n_steps=100)  # KL too high -> error clipped to 0.2 -> beta * 1.02
    assert ctl.beta == pytest.approx(0.1 * 1.02)
    ctl.update(3.0, n_steps=100)  # KL too low -> error -0.5 clipped to -0.2 -> beta * 0.98
    assert ctl.beta == pytest.approx(0.1 * 1.02 * 0.98)
    ctl.update(6.6, n_steps=500)  # error 0.1 -> beta * 1.05
    assert ctl.beta == pytest.approx(0.1 * 1.02 * 0.98 * 1.05)
    other = AdaptiveKLController(init_beta=0.5, target=6.0, horizon=1000)
    other.load_state_dict(ctl.state_dict())
    assert other.beta == ctl.beta
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 1000)
    assert fixed.beta == 0.05
    with pytest.raises(ValueError, match="current_kl"):
        ctl.update(float("nan"), 1)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_infinite_padding_gives_finite_gradients(kind):
    lp = torch.tensor([[-1.0, float("-inf")]], requires_grad=True)
    ref = torch.tensor([[-2.0, float("inf")]])
    kl_penalty(lp, ref, torch.tensor([[1, 0]]), kind).sum().backward()
    assert bool(torch.isfinite(lp.grad).all()) and lp.grad[0, 1] == 0


def test_token_level_rewards_refuses_nan_scores():
    with pytest.raises(ValueError, match="non-finite score nan in row 1"):
        token_level_rewards(torch.tensor([0.0, float("nan")]), LP, REF, MASK, beta=0.1)
