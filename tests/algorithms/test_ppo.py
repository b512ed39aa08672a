"""PPO and MA-PPO: MA-PPO with fixed n = 1 is exactly PPO (advantages and loss on one rollout),
macro-action GAE on a hand-made rollout, and end-to-end fits through the CLI with resume."""

from __future__ import annotations

import pytest
import torch

from lightning_rlhf.algorithms.ppo import MAPPO, PPO
from lightning_rlhf.data.tasks import get_tokenizer
from lightning_rlhf.losses.ppo import explained_variance, value_loss
from lightning_rlhf.models import LoraConfig, ModelConfig
from lightning_rlhf.rl.kl import token_level_rewards
from tests.algorithms.e2e import run_fit
from tests.algorithms.online_helpers import (
    hand_made_experience,
    make_module,
    online_args,
    starts_with_one,
)

ARITHMETIC = "lightning_rlhf.data.tasks.arithmetic:reward"


def test_mappo_n1_equals_ppo_exactly(sft_export):
    """With their defaults (whitening included) MA-PPO with n = 1 is PPO, bit for bit."""
    ppo = make_module(PPO, sft_export)
    mappo = make_module(MAPPO, sft_export, segmenter="fixed", n=1)
    assert ppo.hparams.whiten_advantages and mappo.hparams.whiten_advantages
    exp_a, exp_b = hand_made_experience(ppo), hand_made_experience(ppo)
    ppo.compute_advantages(exp_a, {})
    mappo.compute_advantages(exp_b, {})
    assert not torch.equal(exp_a.advantages, torch.zeros_like(exp_a.advantages))
    torch.testing.assert_close(exp_b.advantages, exp_a.advantages, rtol=0, atol=0)
    torch.testing.assert_close(exp_b.returns, exp_a.returns, rtol=0, atol=0)
    loss_a, stats_a = ppo.loss(exp_a)
    loss_b, stats_b = mappo.loss(exp_b)
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=0)
    assert stats_a.keys() == stats_b.keys()


def test_ppo_advantages_are_token_gae_of_kl_shaped_rewards(sft_export):
    ppo = make_module(PPO, sft_export, whiten_advantages=False, kl_beta=0.1, lam=0.9)
    exp = hand_made_experience(ppo)
    ppo.compute_advantages(exp, {})
    rewards = token_level_rewards(
        exp.scores, exp.old_logprobs, exp.ref_logprobs, exp.mask, beta=0.1
    )
    # textbook GAE, written as a Python loop over each row's valid tokens
    for b in range(exp.num_rows):
        n = int(exp.mask[b].sum())
        adv, next_value, next_adv = [0.0] * n, 0.0, 0.0
        for t in reversed(range(n)):
            delta = float(rewards[b, t]) + next_value - float(exp.values[b, t])
            next_adv = delta + 0.9 * next_adv
            adv[t], next_value = next_adv, float(exp.values[b, t])
        torch.testing.assert_close(exp.advantages[b, :n], torch.tensor(adv), atol=1e-5, rtol=1e-5)
        assert (exp.advantages[b, n:] == 0).all()


def test_mappo_bigrams_share_advantages_within_a_macro(sft_export):
    mappo = make_module(MAPPO, sft_export, segmenter="fixed", n=2)
    exp = hand_made_experience(mappo)
    mappo.compute_advantages(exp, {})
    for b in range(exp.num_rows):
        n = int(exp.mask[b].sum())
        ids = exp.segment_ids[b, :n]
        assert ids[-1] != ids[-2], "the last token is its own macro action"
        for k in ids.unique():
            values = exp.advantages[b, :n][ids == k]
            assert torch.all(values == values[0])
    # the segment-level ratio is the product of a macro's token ratios: exactly kernels' segment
    # form of the clipped surrogate (which the token-level test above pins by hand)
    import kernels

    mappo.hparams.ratio_level = "segment"
    logprobs = mappo.logprobs(mappo.policy, exp)
    expected, _ = kernels.ppo_clip_loss(
        logprobs, exp.old_logprobs, exp.advantages, exp.mask, clip_low=0.2, clip_high=0.2,
        ratio_level="segment", segment_ids=exp.segment_ids, backend="torch",
    )  # fmt: skip
    policy_loss = mappo.loss(exp)[1]["policy_loss"]
    torch.testing.assert_close(policy_loss, expected.detach())


def test_ppo_first_minibatch_is_on_policy(sft_export):
    ppo = make_module(PPO, sft_export)
    exp = hand_made_experience(ppo)
    ppo.compute_advantages(exp, {})
    _, stats = ppo.loss(exp)
    assert stats["ratio_mean"].item() == pytest.approx(1.0, abs=1e-6)
    assert stats["clip_frac"].item() == 0.0


@pytest.mark.parametrize(
    "config",
    ["ppo/arithmetic.yaml", "mappo/arithmetic.yaml"],
)
def test_fits_resumes_and_changes_every_weight(config, sft_export, tmp_path):
    cli, snap = run_fit(config, tmp_path, *online_args(sft_export), steps=2)
    assert cli.trainer.global_step == 2
    assert snap.unchanged(cli.model) == [], "every trainable parameter (policy, critic) moves"
    metrics = cli.trainer.callback_metrics
    ev = ("train/explained_variance", "critic/explained_variance")
    for key in ("rollout/reward", "rollout/kl_k1", *ev, "time/generate"):
        assert torch.isfinite(metrics[key]), key
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    assert any(k.startswith("critic.") for k in state["state_dict"])
    assert not any(k.startswith("reference.") for k in state["state_dict"])
    resumed, snap2 = run_fit(config, tmp_path, *online_args(sft_export), steps=4, ckpt_path=last)
    assert snap2.start_step == 2
    assert resumed.trainer.global_step == 4
    assert snap2.unchanged(resumed.model) == []


def test_value_model_reads_the_state_before_each_token(sft_export):
    ppo = make_module(PPO, sft_export)
    exp = hand_made_experience(ppo)
    full = ppo.critic(exp.input_ids, exp.attention_mask)  # (N, L)
    values = ppo.critic.response_values(exp.input_ids, exp.attention_mask, exp.prompt_length)
    torch.testing.assert_close(values[:, 0], full[:, exp.prompt_length - 1])
    assert values.shape == exp.mask.shape


def test_fresh_critic_predicts_one_value_everywhere(sft_export):
    """A new head knows nothing of the outcome, so it says so: the same value at every state
    (explained variance exactly 0), not random values that start it below 0."""
    ppo = make_module(PPO, sft_export)
    exp = hand_made_experience(ppo)
    ppo.compute_advantages(exp, {})
    values = exp.values[exp.mask.bool()]
    assert torch.all(values == values[0])
    assert explained_variance(exp.values, exp.returns, exp.mask).item() == 0.0


def test_critic_learns_a_return_it_can_see_and_not_one_it_cannot(sft_export):
    """One prompt, responses whose reward is 1 when they start with '1'. The state before the
    first response token cannot know the reward, so its value is one number for every row; the
    states after it can, so a critic fitted on the batch explains the returns there. Reading the
    values one position late (the state including the token) or early breaks one of the two."""
    responses = ["12", "13", "21", "22", "15", "31", "11", "42"]
    prompts = ["12+34="] * len(responses)
    scores = starts_with_one(prompts, responses)
    torch.manual_seed(0)
    ppo = make_module(PPO, sft_export, kl_beta=0.0, lam=1.0)
    exp = hand_made_experience(ppo, prompts, responses, scores)
    ppo.compute_advantages(exp, {})  # gamma = lam = 1, no KL: Ret_t = R at every token
    torch.testing.assert_close(exp.returns[:, 0], torch.tensor(scores))
    optimizer = torch.optim.AdamW(ppo.critic.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(100):
        values = ppo.critic.response_values(exp.input_ids, exp.attention_mask, exp.prompt_length)
        loss, _ = value_loss(values, exp.values, exp.returns, exp.mask, clip=None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        values = ppo.critic.response_values(exp.input_ids, exp.attention_mask, exp.prompt_length)
    first = values[:, 0]
    torch.testing.assert_close(first, first[:1].expand_as(first), rtol=0, atol=1e-5)
    after = exp.mask.bool() & (torch.arange(exp.mask.shape[1]) > 0)
    assert explained_variance(values, exp.returns, after).item() > 0.9


def test_lora_policy_uses_the_base_as_reference_and_a_full_critic(sft_export):
    lora = LoraConfig(r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    torch.manual_seed(0)
    module = PPO(ModelConfig(name_or_path=str(sft_export), lora=lora), reward=ARITHMETIC)
    module.attach_tokenizer(get_tokenizer("arithmetic"))
    module.configure_model()
    assert module.reference is None, "no second copy: the base with the adapter off"
    assert not any("lora" in n for n, _ in module.critic.named_parameters())
    exp = hand_made_experience(module)
    torch.testing.assert_close(exp.ref_logprobs, exp.old_logprobs)  # LoRA B starts at 0
    with torch.no_grad():
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    moved = module.logprobs(module.policy, exp)
    assert (moved - exp.old_logprobs).abs().max() > 1e-4
    torch.testing.assert_close(module.reference_logprobs(exp), exp.ref_logprobs)


def test_randomized_segmenter_cuts_differently_each_rollout_and_reproducibly(sft_export):
    from unittest.mock import PropertyMock, patch

    module = make_module(MAPPO, sft_export, segmenter="randomized", n=2)
    exp = hand_made_experience(module, responses=["1234567", "7654321", "1111111", "2222222"])
    cuts = {}
    for step in (0, 1, 0):
        with patch.object(MAPPO, "global_step", new_callable=PropertyMock, return_value=step):
            cuts.setdefault(step, []).append(module.segments(exp))
    assert torch.equal(cuts[0][0], cuts[0][1]), "the same rollout step must cut the same way"
    assert not torch.equal(cuts[0][0], cuts[1][0]), "another rollout step should cut differently"
