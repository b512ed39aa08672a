"""Critic-free relatives of P3O (ALGORITHMS.md 7): RLOO (Ahmadian et al. 2024, "Back to Basics"),
ReMax (Li et al. 2023) and GRPO (Shao et al. 2024, DeepSeekMath).

RLOO and ReMax fold the sequence KL into the reward (R - beta * (l_old - l_ref)) and differ only
in the baseline; GRPO normalises rewards within the group and adds a k3 KL term to its loss.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

import kernels
from lightning_rlhf.algorithms.online import OnlineRLModule, timed
from lightning_rlhf.algorithms.ppo import online_stage
from lightning_rlhf.checks import check_range
from lightning_rlhf.losses.critic_free import (
    grpo_advantages,
    grpo_loss,
    reinforce_loss,
    remax_advantages,
    rloo_advantages,
)
from lightning_rlhf.models import ModelConfig
from lightning_rlhf.rl.buffer import Experience
from lightning_rlhf.rl.kl import sequence_kl
from lightning_rlhf.rl.rewards import normalize_rewards


class SequencePolicyGradient(OnlineRLModule):
    """Shared loss of RLOO and ReMax: one advantage per sequence.

    With ``ppo_epochs == 1`` the loss is REINFORCE (``reinforce_loss``); with more epochs the
    rollout is reused, so the loss becomes the token-ratio clipped surrogate with the sequence
    advantage on every token, summed over tokens and averaged over sequences (the same gradient
    on-policy).

    Args:
        clip_eps: ratio clip range of the multi-epoch surrogate.
        The rest: see :class:`OnlineRLModule`.
    """

    def __init__(self, policy: ModelConfig, clip_eps: float = 0.2, **kwargs: Any) -> None:
        super().__init__(policy, **kwargs)
        check_range(self, "clip_eps", clip_eps, gt=0, lt=1)

    def penalised_scores(self, exp: Experience) -> torch.Tensor:
        """(N,) R - beta * (l_old - l_ref): the reward with the sequence KL folded in."""
        return exp.scores - self.kl_beta * sequence_kl(exp.old_logprobs, exp.ref_logprobs, exp.mask)

    def loss(self, mb: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logprobs = self.logprobs(self.policy, mb)  # (M, T)
        if self.hparams.ppo_epochs == 1:
            return reinforce_loss(logprobs, mb.mask, mb.advantages)
        token_adv = mb.advantages[:, None].expand_as(logprobs).contiguous()  # (M, T)
        eps = self.hparams.clip_eps
        loss, stats = kernels.ppo_clip_loss(
            logprobs, mb.old_logprobs, token_adv, mb.mask, clip_low=eps, clip_high=eps,
            reduction="sum",
        )  # fmt: skip
        loss = loss / mb.num_rows
        return loss, {"loss": loss.detach(), **stats}


class RLOO(SequencePolicyGradient):
    """REINFORCE leave-one-out: K samples per prompt, A_i = R_i - mean_{j != i} R_j.

    Args: see :class:`SequencePolicyGradient` (``samples_per_prompt`` K >= 2, default 4).
    """

    demo_stages = (online_stage("rloo", "rloo/arithmetic.yaml", 26, 16, 4),)

    def __init__(self, policy: ModelConfig, samples_per_prompt: int = 4, **kwargs: Any) -> None:
        if samples_per_prompt < 2:
            raise ValueError(f"RLOO: samples_per_prompt must be >= 2, got {samples_per_prompt}")
        super().__init__(policy, samples_per_prompt=samples_per_prompt, **kwargs)

    def compute_advantages(self, exp: Experience, timings: dict[str, float]) -> None:
        scores = self.penalised_scores(exp).view(-1, exp.group_size)  # (G, K)
        exp.advantages = rloo_advantages(scores).reshape(-1)  # (N,)


class ReMax(SequencePolicyGradient):
    """ReMax: one sample per prompt; the baseline is the reward of the greedy response.

    Args: see :class:`SequencePolicyGradient` (``samples_per_prompt`` must stay 1).
    """

    demo_stages = (online_stage("remax", "remax/arithmetic.yaml", 27, 16, 4),)

    def __init__(self, policy: ModelConfig, samples_per_prompt: int = 1, **kwargs: Any) -> None:
        if samples_per_prompt != 1:
            raise ValueError(f"ReMax: samples_per_prompt must be 1, got {samples_per_prompt}")
        super().__init__(policy, samples_per_prompt=samples_per_prompt, **kwargs)

    @torch.no_grad()
    def compute_advantages(self, exp: Experience, timings: dict[str, float]) -> None:
        p = exp.prompt_length
        with timed(timings, "generate", self.device):
            greedy = self.sample(exp.input_ids[:, :p], exp.attention_mask[:, :p], do_sample=False)
        with timed(timings, "score", self.device):
            baseline = self.score(exp.extra["prompts"], greedy.responses)  # (N,)
        self.log("rollout/greedy_reward", baseline.mean(), batch_size=exp.num_rows)
        # the same scale (running std, clip) as exp.scores, without updating the statistics
        baseline = normalize_rewards(
            baseline, self.reward_moments, clip=self.hparams.reward_clip, update=False
        )
        exp.advantages = remax_advantages(self.penalised_scores(exp), baseline)  # (N,)


class GRPO(OnlineRLModule):
    """GRPO: a group of K samples, A_i = (r_i - mean) / std, token-level clipped surrogate plus
    ``kl_beta`` * k3 KL to the reference in the loss.

    Args:
        clip_eps: ratio clip range.
        reduction: "token_mean" (default; DAPO / recent TRL) or "seq_mean" (the paper).
        scale_advantages: divide by the group std (False: Dr. GRPO).
        The rest: see :class:`OnlineRLModule` (K default 4, ``kl_beta`` default 0.04).
    """

    demo_stages = (online_stage("grpo", "grpo/arithmetic.yaml", 28, 16, 4),)

    def __init__(
        self,
        policy: ModelConfig,
        clip_eps: float = 0.2,
        reduction: Literal["token_mean", "seq_mean"] = "token_mean",
        scale_advantages: bool = True,
        samples_per_prompt: int = 4,
        kl_beta: float = 0.04,
        **kwargs: Any,
    ) -> None:
        if samples_per_prompt < 2:
            raise ValueError(f"GRPO: samples_per_prompt must be >= 2, got {samples_per_prompt}")
        super().__init__(policy, samples_per_prompt=samples_per_prompt, kl_beta=kl_beta, **kwargs)
        check_range(self, "clip_eps", clip_eps, gt=0, lt=1)

    def compute_advantages(self, exp: Experience, timings: dict[str, float]) -> None:
        scores = exp.scores.view(-1, exp.group_size)  # (G, K)
        exp.advantages = grpo_advantages(scores, scale=self.hparams.scale_advantages).reshape(
            -1
        )  # (N,)

    def loss(self, mb: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logprobs = self.logprobs(self.policy, mb)  # (M, T)
        return grpo_loss(
            logprobs, mb.old_logprobs, mb.ref_logprobs, mb.advantages, mb.mask,
            clip_eps=self.hparams.clip_eps, beta=self.kl_beta, reduction=self.hparams.reduction,
        )  # fmt: skip
