"""RLOO, ReMax and GRPO: advantages and losses of the modules on a hand-made rollout, RLOO with
K = 2 has P3O's on-policy gradient, end-to-end fits through the CLI with resume, and the options:
GRPO's reach grpo_loss, asymmetric clipping, DAPO's minibatch weights, the on-policy shortcut
(policy forwards counted), zero-variance logging and its one-line warning."""

from __future__ import annotations

import csv
import logging

import pytest
import torch

import kernels
from lightning_rlhf.algorithms.critic_free import GRPO, RLOO, ReMax
from lightning_rlhf.algorithms.online import OnlineRLModule
from lightning_rlhf.algorithms.p3o import P3O
from lightning_rlhf.algorithms.ppo import PPO
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
        clip_low=0.2, beta=0.04,
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
    # one rollout, two epochs over it: metrics.csv says both (Lightning's `step` counts rollouts
    # before the row's own)
    assert _counters(tmp_path) == [(0, 1, 2)]
    last = tmp_path / "checkpoints" / "last.ckpt"
    resumed, snap2 = run_fit(config, tmp_path, *online_args(sft_export), steps=4, ckpt_path=last)
    assert snap2.start_step == 2 and resumed.trainer.global_step == 4
    assert snap2.unchanged(resumed.model) == []
    assert _counters(tmp_path) == [(1, 2, 4)]  # the resumed run continues both counts


def _counters(root) -> list[tuple[int, int, int]]:
    """(step, rollout, optimizer_step) of each training row of ``root/metrics.csv``."""
    with open(root / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["rollout"]]
    return [tuple(int(float(r[k])) for k in ("step", "rollout", "optimizer_step")) for r in rows]


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


# --- GRPO options and the shared online options -------------------------------------------------


def constant_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """0.5 for every response: every group has zero variance (scorer spec
    ``tests.algorithms.test_critic_free:constant_reward``)."""
    return [0.5] * len(responses)


def test_grpo_module_passes_its_options_to_the_loss(sft_export):
    """Every GRPO option reaches grpo_loss; row 1 (EOS overwritten: truncated) and the second
    group (rewards [1, 1]: zero variance) leave the loss mask."""
    options = dict(reduction="constant", clip_low=0.1, clip_high=0.3, delta=2.0,
                   ratio_level="sequence", entropy_coef=0.01, mask_truncated=True,
                   drop_zero_variance=True)  # fmt: skip
    module = make_module(GRPO, sft_export, samples_per_prompt=2, max_new_tokens=8, **options)
    exp = hand_made_experience(module, scores=[1.0, 0.25, 1.0, 1.0])
    eos = module.tokenizer.eos_token_id
    exp.response_ids[1][exp.response_ids[1] == eos] = exp.response_ids[1, 0]
    module.compute_advantages(exp, {})
    _perturb(module)
    loss, stats = module.loss(exp)
    logprobs, entropy = module.logprobs(module.policy, exp, entropy=True)
    keep = torch.tensor([1, 0, 0, 0])[:, None]
    expected, _ = grpo_loss(
        logprobs, exp.old_logprobs, exp.ref_logprobs, exp.advantages, exp.mask * keep,
        clip_low=0.1, clip_high=0.3, beta=0.04, reduction="constant", max_tokens=8, delta=2.0,
        ratio_level="sequence", entropy=entropy, entropy_coef=0.01,
    )  # fmt: skip
    torch.testing.assert_close(loss, expected)
    plain, _ = grpo_loss(logprobs, exp.old_logprobs, exp.ref_logprobs, exp.advantages, exp.mask)
    assert not torch.allclose(loss, plain)
    assert stats["entropy"] > 0


def test_grpo_reward_scaling_options(sft_export):
    module = make_module(GRPO, sft_export, scale_rewards="batch", std_eps=1e-4)
    exp = hand_made_experience(module)
    module.compute_advantages(exp, {})
    scores = exp.scores.view(1, 4)
    want = (scores - scores.mean()) / (scores.std() + 1e-4)  # one group: batch = group mean
    torch.testing.assert_close(exp.advantages, want.view(-1))
    module = make_module(GRPO, sft_export, scale_rewards="none")
    module.compute_advantages(exp, {})
    torch.testing.assert_close(exp.advantages, (scores - scores.mean()).view(-1))


def test_global_token_mean_weights_minibatches_by_tokens(sft_export):
    module = make_module(GRPO, sft_export, samples_per_prompt=2, reduction="global_token_mean")
    exp = hand_made_experience(module)  # responses "46", "95", "18", "95" + EOS
    exp.mask[3, 1:] = 0  # rows 0-1 keep 3 + 3 tokens, rows 2-3 keep 3 + 1
    group = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    assert module.minibatch_weights(exp, group) == [0.6, 0.4]
    default = make_module(GRPO, sft_export, samples_per_prompt=2)
    assert default.minibatch_weights(exp, group) == [0.5, 0.5]


@pytest.mark.parametrize("cls", [RLOO, ReMax, GRPO, PPO])
def test_asymmetric_clip_range(cls, sft_export):
    k = 1 if cls in (ReMax, PPO) else 2
    module = make_module(cls, sft_export, samples_per_prompt=k, clip_low=0.1, clip_high=0.3)
    assert module.clip_range == (0.1, 0.3)
    assert make_module(cls, sft_export, samples_per_prompt=k, clip_eps=0.25).clip_range == (
        0.25, 0.25
    )  # fmt: skip
    with pytest.raises(ValueError, match="need 0 <= clip_low < 1"):
        make_module(cls, sft_export, samples_per_prompt=k, clip_low=1.5)


def test_rloo_multi_epoch_surrogate_clips_asymmetrically(sft_export):
    module = make_module(RLOO, sft_export, ppo_epochs=2, clip_low=0.05, clip_high=0.5)
    exp = hand_made_experience(module)
    module.compute_advantages(exp, {})
    _perturb(module, scale=0.2)
    loss, _ = module.loss(exp)
    logprobs = module.logprobs(module.policy, exp)
    adv = exp.advantages[:, None].expand_as(logprobs).contiguous()
    expected, stats = kernels.ppo_clip_loss(
        logprobs, exp.old_logprobs, adv, exp.mask, clip_low=0.05, clip_high=0.5, reduction="sum"
    )
    torch.testing.assert_close(loss, expected / 4)
    symmetric, _ = kernels.ppo_clip_loss(
        logprobs, exp.old_logprobs, adv, exp.mask, clip_low=0.2, clip_high=0.2, reduction="sum"
    )
    assert stats["clip_frac"] > 0 and not torch.allclose(expected, symmetric)


def test_p3o_refuses_asymmetric_clipping(sft_export):
    with pytest.raises(ValueError, match="P3O: its objective clips symmetrically"):
        make_module(P3O, sft_export, clip_high=0.3)
    assert make_module(P3O, sft_export, clip_low=0.3, clip_high=0.3).clip_range == (0.3, 0.3)


def test_grpo_refuses_a_delta_inside_the_clip_range(sft_export):
    with pytest.raises(ValueError, match=r"GRPO: delta must be > 1 \+ clip_high"):
        make_module(GRPO, sft_export, clip_high=0.28, delta=1.2)


def _count_policy_forwards(monkeypatch) -> list[int]:
    calls = [0]
    original = OnlineRLModule.logprobs

    def counting(self, model, exp, **kw):
        calls[0] += model is self.policy
        return original(self, model, exp, **kw)

    monkeypatch.setattr(OnlineRLModule, "logprobs", counting)
    return calls


@pytest.mark.parametrize("shortcut", [False, True])
def test_on_policy_shortcut_skips_one_policy_forward(shortcut, sft_export, tmp_path, monkeypatch):
    """One epoch, one minibatch: the shortcut takes the rollout's log-probs (and entropy) with
    gradients and the update reuses them (1 policy forward per rollout instead of 2; ratio
    exactly 1)."""
    calls = _count_policy_forwards(monkeypatch)
    args = online_args(sft_export, "--model.init_args.ppo_epochs", "1",
                       "--model.init_args.on_policy_shortcut", str(shortcut).lower(),
                       "--model.init_args.entropy_coef", "0.01")  # fmt: skip
    cli, snap = run_fit("grpo/arithmetic.yaml", tmp_path, *args, steps=2)
    assert calls[0] == (2 if shortcut else 4)  # two rollouts
    assert snap.unchanged(cli.model) == []
    metrics = cli.trainer.callback_metrics
    assert metrics["train/ratio_mean"].item() == 1.0 and metrics["train/clip_frac"] == 0
    assert metrics["train/entropy"] > 0  # the bonus uses the rollout's entropy under the shortcut


def test_on_policy_shortcut_is_off_for_several_epochs(sft_export, tmp_path, monkeypatch):
    calls = _count_policy_forwards(monkeypatch)
    args = online_args(sft_export, "--model.init_args.on_policy_shortcut", "true")  # 2 epochs
    run_fit("grpo/arithmetic.yaml", tmp_path, *args, steps=2)  # one rollout, two updates
    assert calls[0] == 3


def test_zero_variance_rollouts_are_logged_and_warned_once(sft_export, tmp_path, caplog):
    args = online_args(sft_export, "--model.init_args.ppo_epochs", "1",
                       "--model.init_args.zero_variance_warn_after", "2",
                       "--model.init_args.reward",
                       "tests.algorithms.test_critic_free:constant_reward")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="lightning_rlhf.algorithms.online"):
        cli, _ = run_fit("grpo/arithmetic.yaml", tmp_path, *args, steps=3)
    warned = [r for r in caplog.records if "every group had equal rewards" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0].getMessage()
    assert "2 rollouts in a row" in warned[0].getMessage()
    metrics = cli.trainer.callback_metrics
    assert metrics["rollout/zero_variance_frac"] == 1.0
    assert 0.0 <= metrics["rollout/truncated_frac"] <= 1.0


def test_grpo_fits_with_the_dapo_gspo_options(sft_export, tmp_path):
    """The options parse through the CLI and train: DAPO's global token mean over two
    accumulated minibatches, batch-scaled rewards, clip-higher, delta, GSPO ratios, entropy."""
    options = {
        "reduction": "global_token_mean", "scale_rewards": "batch", "std_eps": "1e-4",
        "clip_high": "0.28", "delta": "2.0", "ratio_level": "sequence", "entropy_coef": "0.01",
        "minibatch_size": "8", "grad_accum": "2", "drop_zero_variance": "true",
    }  # fmt: skip
    extra = [a for k, v in options.items() for a in (f"--model.init_args.{k}", v)]
    cli, snap = run_fit("grpo/arithmetic.yaml", tmp_path, *online_args(sft_export), *extra,
                        steps=2)  # fmt: skip
    assert cli.trainer.global_step == 2 and cli.model.clip_range == (0.2, 0.28)
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and metrics["train/entropy"] > 0
    assert snap.unchanged(cli.model) == []
