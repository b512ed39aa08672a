"""P3O: the module's minibatch loss on a hand-made rollout is ``p3o_loss`` of its sequence sums,
invariant to a per-prompt reward shift, and an end-to-end fit through the CLI with resume."""

from __future__ import annotations

import pytest
import torch

from lightning_rlhf.algorithms.p3o import P3O
from lightning_rlhf.losses.p3o import p3o_loss
from lightning_rlhf.models import response_logprobs
from tests.algorithms.e2e import run_fit
from tests.algorithms.online_helpers import hand_made_experience, make_module, online_args


def _sequence_sums(model, exp) -> torch.Tensor:
    full = exp.response_mask_full()
    lp = response_logprobs(model, exp.input_ids, exp.attention_mask, full)  # (N, L)
    return (lp * full).sum(-1).view(-1, 2)  # (G, 2)


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_module_loss_is_p3o_loss_on_a_hand_made_rollout(sft_export, variant):
    module = make_module(P3O, sft_export, variant=variant, kl_beta=0.1)
    exp = hand_made_experience(module)
    with torch.no_grad():  # move the policy away from pi_old so ratios and KL are not trivial
        for p in module.policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    loss, stats = module.loss(exp)

    theta = _sequence_sums(module.policy, exp)
    old = (exp.old_logprobs * exp.mask).sum(-1).view(-1, 2)
    ref = (exp.ref_logprobs * exp.mask).sum(-1).view(-1, 2)
    r = exp.scores.view(-1, 2)
    expected, expected_stats = p3o_loss(
        theta[:, 0], old[:, 0], ref[:, 0], theta[:, 1], old[:, 1], ref[:, 1], r[:, 0], r[:, 1],
        variant=variant, clip_eps=0.2, kl_beta=0.1, weight_cap=10.0,
    )  # fmt: skip
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["delta_mean"], expected_stats["delta_mean"])
    assert stats["kl_mean"].abs() > 0, "the perturbed policy differs from the reference"

    # one optimiser-free gradient step matches too
    grads = torch.autograd.grad(loss, list(module.policy.parameters()), allow_unused=True)
    theta = _sequence_sums(module.policy, exp)
    expected, _ = p3o_loss(
        theta[:, 0], old[:, 0], ref[:, 0], theta[:, 1], old[:, 1], ref[:, 1], r[:, 0], r[:, 1],
        variant=variant, clip_eps=0.2, kl_beta=0.1, weight_cap=10.0,
    )  # fmt: skip
    ref_grads = torch.autograd.grad(expected, list(module.policy.parameters()), allow_unused=True)
    for g, h in zip(grads, ref_grads):
        if g is not None or h is not None:
            torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-7)


def test_module_loss_ignores_a_per_prompt_reward_shift(sft_export):
    module = make_module(P3O, sft_export)
    exp = hand_made_experience(module)
    loss, _ = module.loss(exp)
    exp.scores = exp.scores + torch.tensor([3.0, 3.0, -7.0, -7.0])  # shift each pair alike
    shifted, _ = module.loss(exp)
    torch.testing.assert_close(shifted, loss)


def test_p3o_needs_pairs(sft_export):
    with pytest.raises(ValueError, match="P3O: samples_per_prompt must be 2"):
        make_module(P3O, sft_export, samples_per_prompt=3)


def test_p3o_fits_resumes_and_changes_every_weight(sft_export, tmp_path):
    cli, snap = run_fit("p3o/arithmetic.yaml", tmp_path, *online_args(sft_export), steps=2)
    assert cli.trainer.global_step == 2
    assert snap.unchanged(cli.model) == []
    metrics = cli.trainer.callback_metrics
    for key in ("rollout/reward", "rollout/kl_k3", "train/delta_mean", "time/update"):
        assert torch.isfinite(metrics[key]), key
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    assert state["online"]["reward_moments"]["count"] == 8, "4 prompts x 2 samples were seen"
    resumed, snap2 = run_fit(
        "p3o/arithmetic.yaml", tmp_path, *online_args(sft_export), steps=4, ckpt_path=last
    )
    assert snap2.start_step == 2 and resumed.trainer.global_step == 4
    assert resumed.model.reward_moments.count == 16, "running moments resumed from the checkpoint"
    assert snap2.unchanged(resumed.model) == []
