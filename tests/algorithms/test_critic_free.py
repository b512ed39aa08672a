"""RLOO, ReMax and GRPO: advantages and losses of the modules on a hand-made rollout, RLOO with
K = 2 has P3O's on-policy gradient, and end-to-end fits through the CLI with resume."""

from __future__ import annotations

import pytest
import torch

from lightning_rlhf.algorithms.critic_free import GRPO, RLOO, ReMax
from lightning_rlhf.algorithms.p3o import P3O
from lightning_rlhf.losses.critic_free import grpo_advantages, grpo_loss, rloo_advantages
from lightning_rlhf.losses.kl import sequence_kl
from tests.algorithms.e2e import run_fit
from tests.algorithms.online_helpers import hand_made_experience, make_module, online_args


def _perturb(module, scale: float = 0.02) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(scale * torch.randn_like(p))


def test_rloo_advantages_fold_the_sequence_kl_into_the_reward(sft_export):
    module = make_module(RLOO, sft_export, kl_beta=0.5)
    _perturb(module)  # old != ref, so the KL term is not zero
    exp = hand_made_experience(module)
    module.compute_advantages(exp, {})
    kl = sequence_kl(exp.old_logprobs, exp.ref_logprobs, exp.mask)
    assert kl.abs().max() > 1e-3
    expected = rloo_advantages((exp.scores - 0.5 * kl).view(1, 4)).view(-1)
    torch.testing.assert_close(exp.advantages, expected)


def test_rloo_with_two_samples_has_the_on_policy_p3o_gradient(sft_export):
    rloo = make_module(RLOO, sft_export, samples_per_prompt=2, kl_beta=0.1)
    p3o = make_module(P3O, sft_export, kl_beta=0.1, reward_clip=None, normalize_reward=False)
    _perturb(rloo), _perturb(p3o)
    grads = []
    for module in (rloo, p3o):
        exp = hand_made_experience(module)
        module.compute_advantages(exp, {})
        loss, _ = module.loss(exp)
        grads.append(torch.autograd.grad(loss, list(module.policy.parameters())))
    for g_rloo, g_p3o in zip(*grads):
        torch.testing.assert_close(g_rloo, g_p3o, rtol=1e-4, atol=1e-7)


def test_remax_baseline_is_the_greedy_reward(sft_export):
    module = make_module(ReMax, sft_export, kl_beta=0.0)
    exp = hand_made_experience(module)
    exp.extra["raw_scores"] = exp.scores
    module.compute_advantages(exp, {})
    p = exp.prompt_length
    greedy = module.sample(exp.input_ids[:, :p], exp.attention_mask[:, :p], do_sample=False)
    baseline = module.score(exp.extra["prompts"], greedy.responses)
    torch.testing.assert_close(exp.advantages, exp.scores - baseline)


def test_grpo_module_uses_group_advantages_and_grpo_loss(sft_export):
    module = make_module(GRPO, sft_export)
    exp = hand_made_experience(module)
    module.compute_advantages(exp, {})
    torch.testing.assert_close(exp.advantages, grpo_advantages(exp.scores.view(1, 4)).view(-1))
    _perturb(module)
    loss, stats = module.loss(exp)
    logprobs = module.logprobs(module.policy, exp)
    expected, _ = grpo_loss(
        logprobs, exp.old_logprobs, exp.ref_logprobs, exp.advantages, exp.mask,
        clip_eps=0.2, beta=0.04,
    )  # fmt: skip
    torch.testing.assert_close(loss, expected)
    assert stats["kl"] > 0


@pytest.mark.parametrize("cls", [RLOO, GRPO])
def test_group_methods_refuse_single_samples(cls, sft_export):
    with pytest.raises(ValueError, match="samples_per_prompt must be >= 2"):
        make_module(cls, sft_export, samples_per_prompt=1)


@pytest.mark.parametrize("config", ["rloo/arithmetic.yaml", "remax/arithmetic.yaml",
                                    "grpo/arithmetic.yaml"])  # fmt: skip
def test_fits_resumes_and_changes_every_weight(config, sft_export, tmp_path):
    cli, snap = run_fit(config, tmp_path, *online_args(sft_export), steps=2)
    assert cli.trainer.global_step == 2
    assert snap.unchanged(cli.model) == []
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    last = tmp_path / "checkpoints" / "last.ckpt"
    resumed, snap2 = run_fit(config, tmp_path, *online_args(sft_export), steps=4, ckpt_path=last)
    assert snap2.start_step == 2 and resumed.trainer.global_step == 4
    assert snap2.unchanged(resumed.model) == []


def test_remax_baseline_is_normalised_like_the_scores(sft_export):
    """With running reward normalisation, the greedy baseline is divided by the same running std
    as the sampled scores (a raw baseline minus normalised scores would be meaningless)."""
    module = make_module(ReMax, sft_export, kl_beta=0.0, normalize_reward=True)
    module._reward_fn = lambda prompts, responses: torch.full((len(prompts),), 0.75)
    module.reward_moments.update(torch.tensor([0.0, 4.0]))  # running std 2.83
    std = module.reward_moments.std
    exp = hand_made_experience(module)
    exp.extra["raw_scores"] = exp.scores
    exp.scores = exp.scores / std
    module.compute_advantages(exp, {})
    p = exp.prompt_length
    greedy = module.sample(exp.input_ids[:, :p], exp.attention_mask[:, :p], do_sample=False)
    baseline = module.score(exp.extra["prompts"], greedy.responses)
    assert baseline.abs().sum() > 0, "a zero baseline could not tell raw from normalised"
    torch.testing.assert_close(exp.advantages, (exp.extra["raw_scores"] - baseline) / std)
