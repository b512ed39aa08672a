"""Critic-free relatives of P3O (losses/README.md §7): RLOO (Ahmadian et al. 2024, "Back to
Basics"), ReMax (Li et al. 2023) and GRPO (Shao et al. 2024, DeepSeekMath).

RLOO and ReMax fold the sequence KL into the reward (R - beta * (l_old - l_ref)) and differ only
in the baseline; GRPO normalises rewards within the group and adds a k3 KL term to its loss.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_rlhf.algorithms.online import OnlineRLModule
from lightning_rlhf.checks import check_range
from lightning_rlhf.losses.critic_free import (
    accumulation_weights,
    check_clip_range,
    grpo_advantages,
    grpo_loss,
    loss_rows,
    reinforce_loss,
    remax_advantages,
    rloo_advantages,
)
from lightning_rlhf.losses.kl import sequence_kl
from lightning_rlhf.losses.ppo import policy_loss
from lightning_rlhf.models import ModelConfig
from lightning_rlhf.rl.buffer import Experience
from lightning_rlhf.rl.phases import timed
from lightning_rlhf.rl.rewards import normalize_rewards


class SequencePolicyGradient(OnlineRLModule):
    """Shared loss of RLOO and ReMax: one advantage per sequence.

    With ``ppo_epochs == 1`` the loss is REINFORCE (``reinforce_loss``); with more epochs the
    rollout is reused, so the loss becomes the token-ratio clipped surrogate with the sequence
    advantage on every token, summed over tokens and averaged over sequences (the same gradient
    on-policy).

    Args:
        clip_eps: ratio clip range of the multi-epoch surrogate (``clip_low`` / ``clip_high``
            make it asymmetric).
        The rest: see :class:`OnlineRLModule`.
    """

    def __init__(self, policy: ModelConfig, clip_eps: float = 0.2, **kwargs: Any) -> None:
        super().__init__(policy, **kwargs)
        check_range(self, "clip_eps", clip_eps, gt=0, lt=1)

    def penalised_scores(self, exp: Experience) -> torch.Tensor:
        """(N,) R - beta * (l_old - l_ref): the reward with the sequence KL folded in."""
        return exp.scores - self.kl_beta * sequence_kl(exp.old_logprobs, exp.ref_logprobs, exp.mask)

    def loss(self, mb: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logprobs = self.policy_logprobs(mb)  # (M, T)
        if self.hparams.ppo_epochs == 1:
            return reinforce_loss(logprobs, mb.mask, mb.advantages)
        token_adv = mb.advantages[:, None].expand_as(logprobs).contiguous()  # (M, T)
        low, high = self.clip_range
        loss, stats = policy_loss(
            logprobs, mb.old_logprobs, token_adv, mb.mask, clip_low=low, clip_high=high,
            reduction="sum",
        )  # fmt: skip
        loss = loss / mb.num_rows
        return loss, {"loss": loss.detach(), **stats}


class RLOO(SequencePolicyGradient):
    """REINFORCE leave-one-out: K samples per prompt, A_i = R_i - mean_{j != i} R_j.

    Args: see :class:`SequencePolicyGradient` (``samples_per_prompt`` K >= 2, default 4).
    """


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
        self.log_stats("rollout", {"greedy_reward": baseline.mean()}, batch_size=exp.num_rows)
        # the same scale (running std, clip) as exp.scores, without updating the statistics
        baseline = normalize_rewards(
            baseline, self.reward_moments, clip=self.hparams.reward_clip, update=False
        )
        exp.advantages = remax_advantages(self.penalised_scores(exp), baseline)  # (N,)


class GRPO(OnlineRLModule):
    """GRPO: a group of K samples, A_i = (r_i - mean) / std, token-level clipped surrogate plus
    ``kl_beta`` * k3 KL to the reference in the loss (``losses.critic_free.grpo_loss``).

    Args:
        clip_eps: ratio clip range (``clip_low`` / ``clip_high`` make it asymmetric).
        reduction: "token_mean" (default; TRL "bnpo"), "seq_mean" (the paper; TRL "grpo"),
            "constant" (sum / (B * max_new_tokens): Dr. GRPO) or "global_token_mean" (DAPO:
            the token mean of the whole accumulated batch).
        scale_rewards: divide the centred rewards by the "group" std, the "batch" std or not at
            all ("none": Dr. GRPO).
        std_eps: added to that std.
        delta: cap of the unclipped ratio (two-sided clipping); None: no cap.
        ratio_level: "token" or "sequence" (GSPO's length-normalised sequence ratio).
        entropy_coef: weight of the entropy bonus (the loss subtracts coef * entropy).
        mask_truncated: leave responses without EOS (cut at max_new_tokens) out of the loss.
        drop_zero_variance: leave groups whose rewards are all equal out of the loss (DAPO).
        The rest: see :class:`OnlineRLModule` (K default 4, ``kl_beta`` default 0.04).
    """


    def __init__(
        self,
        policy: ModelConfig,
        clip_eps: float = 0.2,
        reduction: Literal[
            "token_mean", "seq_mean", "constant", "global_token_mean"
        ] = "token_mean",
        scale_rewards: Literal["group", "batch", "none"] = "group",
        std_eps: float = 1e-6,
        delta: float | None = None,
        ratio_level: Literal["token", "sequence"] = "token",
        entropy_coef: float = 0.0,
        mask_truncated: bool = False,
        drop_zero_variance: bool = False,
        samples_per_prompt: int = 4,
        kl_beta: float = 0.04,
        **kwargs: Any,
    ) -> None:
        if samples_per_prompt < 2:
            raise ValueError(f"GRPO: samples_per_prompt must be >= 2, got {samples_per_prompt}")
        super().__init__(policy, samples_per_prompt=samples_per_prompt, kl_beta=kl_beta, **kwargs)
        check_range(self, "clip_eps", clip_eps, gt=0, lt=1)
        check_clip_range(*self.clip_range, delta, where="GRPO")

    def compute_advantages(self, exp: Experience, timings: dict[str, float]) -> None:
        hp = self.hparams
        scores = exp.scores.view(-1, exp.group_size)  # (G, K)
        exp.advantages = grpo_advantages(scores, hp.std_eps, hp.scale_rewards).reshape(-1)  # (N,)

    def loss_mask(self, mb: Experience) -> torch.Tensor:
        """(M, T) the response mask without the rows the options leave out of the loss."""
        hp = self.hparams
        keep = loss_rows(
            mb.response_ids, mb.mask, mb.scores, mb.group_size, self.tokenizer.eos_token_id,
            mask_truncated=hp.mask_truncated, drop_zero_variance=hp.drop_zero_variance,
        )  # fmt: skip
        return mb.mask if bool(keep.all()) else mb.mask * keep[:, None]

    def minibatch_weights(self, exp: Experience, group: list[torch.Tensor]) -> list[float]:
        """Shares of the rows, or of the valid tokens for reduction="global_token_mean"."""
        masks = [self.loss_mask(exp.select(rows.to(exp.mask.device))) for rows in group]
        return accumulation_weights(masks, self.hparams.reduction)

    def loss(self, mb: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hp = self.hparams
        entropy = None
        if hp.entropy_coef:
            logprobs, entropy = self.policy_logprobs(mb, entropy=True)  # (M, T) each
        else:
            logprobs = self.policy_logprobs(mb)  # (M, T)
        low, high = self.clip_range
        return grpo_loss(
            logprobs, mb.old_logprobs, mb.ref_logprobs, mb.advantages, self.loss_mask(mb),
            clip_low=low, clip_high=high, beta=self.kl_beta, reduction=hp.reduction,
            max_tokens=hp.max_new_tokens, delta=hp.delta, ratio_level=hp.ratio_level,
            entropy=entropy, entropy_coef=hp.entropy_coef,
        )  # fmt: skip
