"""The shared on-policy loop of PPO, MA-PPO, P3O, RLOO, ReMax and GRPO (manual optimisation).

One training step = one rollout batch: sample K responses per prompt, score them, take
old-policy and reference log-probs once (all in ``algorithms/rollout.py``), compute the
algorithm's advantages, then ``ppo_epochs`` epochs of shuffled minibatch updates with gradient
accumulation, clipping and a NaN guard (here).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_rlhf.algorithms.rollout import RolloutModule
from lightning_rlhf.checks import check_range
from lightning_rlhf.losses.critic_free import ZeroVarianceWatch, check_clip_range
from lightning_rlhf.models import ModelConfig
from lightning_rlhf.rl.buffer import Experience, minibatch_rows
from lightning_rlhf.rl.kl import AdaptiveKLController, FixedKLController
from lightning_rlhf.rl.phases import mean_stats, timed
from lightning_rlhf.rl.rewards import (
    RewardSpec,
    RunningMoments,
    check_reward_weights,
)


class OnlineRLModule(RolloutModule):
    """Base of the online algorithms (data format "prompt"); subclasses implement
    :meth:`compute_advantages` and :meth:`loss`.

    ``trainer.global_step`` counts optimiser steps (Lightning's rule under manual optimisation):
    one rollout batch gives ``ppo_epochs * ceil(minibatches / grad_accum)`` of them.

    Args:
        policy: the policy to train (usually the SFT export); the reference is a frozen copy
            (or, with LoRA, the same model with its adapter disabled).
        reward: a scorer ``module:function`` or a reward-model export directory, or a list of
            them whose rewards are summed with ``reward_weights`` (TRL's ``reward_funcs``); each
            one's mean is logged as ``rollout/reward/<name>`` beside the total's
            ``rollout/reward`` (names: ``rl.rewards.reward_names``).
        reward_weights: one weight per reward of the list (TRL's ``reward_weights``); None: 1.0
            each.
        samples_per_prompt: K responses sampled per prompt.
        max_new_tokens, temperature, top_p, top_k: sampling options of the rollout; log-probs
            (old, reference and current) are taken at the same temperature.
        ppo_epochs: passes over each rollout batch.
        minibatch_size: sequences per minibatch (whole groups of K); None: the whole batch.
        grad_accum: minibatches per optimiser step.
        max_grad_norm: gradient-norm clip (None: no clipping).
        kl_beta: KL coefficient to the reference (the starting one when ``kl_target`` is set).
        kl_target: adapt the coefficient towards this sequence KL (nats; Ziegler et al. 2019's
            controller, ``rl.kl.AdaptiveKLController``); None keeps ``kl_beta`` fixed.
        kl_horizon: the adaptive controller's horizon, in sampled responses.
        reward_clip: clip the (normalised) rewards to [-c, c]; None: no clipping.
        normalize_reward: divide rewards by a running standard deviation (checkpointed).
        seed: seed of the minibatch shuffles (mixed with the global step).
        clip_low, clip_high: asymmetric ratio clip range [1 - clip_low, 1 + clip_high] (DAPO's
            clip-higher; TRL's epsilon / epsilon_high); None: the algorithm's ``clip_eps``.
        zero_variance_warn_after: warn once (one line) after this many rollouts in a row where
            every group's rewards were all equal (no signal to learn from); None: never.
        on_policy_shortcut: when the update is exactly on-policy (``ppo_epochs`` 1, one
            minibatch), take the rollout's policy log-probs with gradients and reuse them in the
            loss (old = current.detach(), ratio exactly 1): one policy forward fewer per
            rollout. Off by default: the update otherwise sees the rows in shuffled order, so
            turning it on changes results by rounding.
        rollout_gather: under FSDP2, "once" gathers the whole policy on every rank before
            ``generate`` and frees it after (one all-gather per layer per rollout, one full copy
            of the policy per rank while it lasts); "per_layer" keeps FSDP2's default, which
            gathers each layer again for every new token (for policies too large for one
            device). No effect without FSDP2.
        lr, weight_decay, betas, warmup_steps, schedule, max_nonfinite_steps: see RLHFModule.
    """

    data_format = "prompt"
    dropout_in_training = False

    def __init__(
        self,
        policy: ModelConfig,
        reward: RewardSpec,
        reward_weights: list[float] | None = None,
        samples_per_prompt: int = 1,
        max_new_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        ppo_epochs: int = 1,
        minibatch_size: int | None = None,
        grad_accum: int = 1,
        max_grad_norm: float | None = 1.0,
        kl_beta: float = 0.05,
        kl_target: float | None = None,
        kl_horizon: int = 10000,
        reward_clip: float | None = None,
        normalize_reward: bool = False,
        seed: int = 0,
        clip_low: float | None = None,
        clip_high: float | None = None,
        zero_variance_warn_after: int | None = 5,
        on_policy_shortcut: bool = False,
        rollout_gather: Literal["once", "per_layer"] = "once",
        lr: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, lr=lr, **kwargs)
        check_reward_weights(reward, reward_weights, where=type(self).__name__)
        check_clip_range(*self.clip_range, None, where=type(self).__name__)
        check_range(self, "samples_per_prompt", samples_per_prompt, ge=1)
        check_range(self, "max_new_tokens", max_new_tokens, ge=1)
        check_range(self, "temperature", temperature, gt=0)
        check_range(self, "top_p", top_p, gt=0, le=1)
        check_range(self, "top_k", top_k, ge=0)
        check_range(self, "ppo_epochs", ppo_epochs, ge=1)
        check_range(self, "minibatch_size", minibatch_size, ge=1)
        check_range(self, "grad_accum", grad_accum, ge=1)
        check_range(self, "max_grad_norm", max_grad_norm, gt=0)
        check_range(self, "kl_beta", kl_beta, ge=0)
        check_range(self, "reward_clip", reward_clip, gt=0)
        self.automatic_optimization = False
        #: the one owner of the KL coefficient (checkpointed with the module)
        self.kl_controller = (
            FixedKLController(kl_beta)
            if kl_target is None
            else AdaptiveKLController(kl_beta, kl_target, kl_horizon)
        )
        self.last_rollout_kl = 0.0  # mean sequence KL of the last rollout, all ranks
        self.last_rollout_size = 0  # samples behind last_rollout_kl, all ranks
        self.reward_moments = RunningMoments() if normalize_reward else None
        self._reward_fn: Any = None
        self.last_timings: dict[str, float] = {}  # seconds per phase of the last step, + tokens
        self.zero_variance_watch = ZeroVarianceWatch(zero_variance_warn_after)

    @property
    def clip_range(self) -> tuple[float, float]:
        """(clip_low, clip_high) of the ratio clip, each defaulting to ``clip_eps`` (0.2)."""
        hp = self.hparams
        eps = hp.get("clip_eps", 0.2)
        low, high = hp.get("clip_low"), hp.get("clip_high")
        return (eps if low is None else low, eps if high is None else high)

    @property
    def kl_beta(self) -> float:
        """The current KL coefficient (``kl_controller``'s)."""
        return self.kl_controller.beta

    def needs_reference(self) -> bool:
        return True

    @property
    def group_size(self) -> int:
        """K, the responses sampled per prompt."""
        return self.hparams.samples_per_prompt

    def _check_context_length(self) -> None:
        """Refuse prompts + generated responses longer than the model's context window (online
        algorithms generate ``max_new_tokens``; ``data.max_response_length`` plays no part)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        limit = getattr(getattr(self.policy, "config", None), "max_position_embeddings", None)
        if datamodule is None or not isinstance(limit, int):
            return
        needed = datamodule.max_prompt_length + self.hparams.max_new_tokens
        if needed > limit:
            raise ValueError(
                f"data.max_prompt_length + model.max_new_tokens = {needed} exceeds the model's "
                f"context of {limit} tokens (max_position_embeddings): lower them"
            )

    def trainable_groups(self) -> list[dict[str, Any]]:
        """The policy's parameters (PPO adds the critic's, with its own learning rate)."""
        return [{"params": [p for p in self.policy.parameters() if p.requires_grad]}]

    # --- the algorithm ------------------------------------------------------------------------
    def compute_advantages(self, exp: Experience, timings: dict[str, float]) -> None:
        """Fill ``exp.advantages`` (and returns / values where the algorithm has a critic)."""
        raise NotImplementedError

    def loss(self, mb: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The minibatch loss (with grad) and detached stats."""
        raise NotImplementedError

    # --- optimisation -------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        timings: dict[str, float] = {}
        exp = self.collect(batch, timings)
        with timed(timings, "advantages", self.device):
            self.compute_advantages(exp, timings)
        with timed(timings, "update", self.device):
            stats = self.update(exp)
        if stats:
            self.log_stats("train", stats, prog_bar=True, batch_size=exp.num_rows)
        self.log_stats("time", timings, batch_size=exp.num_rows)
        self._log_counters()
        self.count_tokens(exp.attention_mask)
        self.last_timings = {**timings, "tokens": float(exp.attention_mask.sum())}
        # the next rollout's coefficient (a no-op unless kl_target is set)
        self.kl_controller.update(self.last_rollout_kl, self.last_rollout_size)

    def update(self, exp: Experience) -> dict[str, torch.Tensor]:
        """``ppo_epochs`` epochs of shuffled minibatches, ``grad_accum`` minibatches per step.

        Returns:
            the stats of every minibatch, averaged.
        """
        hp = self.hparams
        size = hp.minibatch_size or exp.num_rows
        generator = torch.Generator().manual_seed(hp.seed * 1_000_003 + self.global_step)
        stats: list[dict[str, torch.Tensor]] = []
        for _ in range(hp.ppo_epochs):
            batches = minibatch_rows(exp.num_groups, exp.group_size, size, generator)
            for start in range(0, len(batches), hp.grad_accum):
                stats += self.optimizer_step(exp, batches[start : start + hp.grad_accum])
        return mean_stats(stats)

    def optimizer_step(
        self, exp: Experience, group: list[torch.Tensor]
    ) -> list[dict[str, torch.Tensor]]:
        """Accumulate the gradients of ``group``'s minibatches (weighted by
        :meth:`minibatch_weights`, by default each one's share of the rows), clip, step the
        optimiser and the lr schedule. A non-finite loss skips the whole step (``guard_loss``);
        non-finite gradients are dropped before the optimiser step by the base class's
        ``on_before_optimizer_step`` (on every rank, FSDP2 shards included)."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        stats, ok = [], True
        for rows, weight in zip(group, self.minibatch_weights(exp, group)):
            device_rows = rows.to(exp.input_ids.device)
            loss, mb_stats = self.loss(exp.select(device_rows))
            loss = self.guard_loss(loss)
            if loss is None:
                ok = False
                break
            self.manual_backward(loss * weight)
            stats.append(mb_stats)
        if ok and self.hparams.max_grad_norm is not None:
            self.clip_gradients(
                opt, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm"
            )
        if ok:
            opt.step()
            sched.step()
        opt.zero_grad(set_to_none=True)
        return stats

    def minibatch_weights(self, exp: Experience, group: list[torch.Tensor]) -> list[float]:
        """The weight of each minibatch loss of one optimiser step: its share of the rows."""
        total = sum(len(rows) for rows in group)
        return [len(rows) / total for rows in group]

    # --- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Greedy responses to the validation prompts: mean reward and length."""
        rollout = self.sample(
            batch["prompt_input_ids"], batch["prompt_attention_mask"], do_sample=False
        )
        rewards = self.score(batch["prompt"], rollout.responses)
        stats = {
            "reward": rewards.mean(),
            "response_length": rollout.response_mask.sum(-1).float().mean(),
        }
        self.log_stats("val", stats, prog_bar=True, batch_size=len(rewards), sync_dist=True)

    # --- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["online"] = {
            "kl": self.kl_controller.state_dict(),
            "reward_moments": self.reward_moments.state_dict() if self.reward_moments else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("online", {})
        if "kl" in state:
            self.kl_controller.load_state_dict(state["kl"])
        if self.reward_moments is not None and state.get("reward_moments"):
            self.reward_moments.load_state_dict(state["reward_moments"])
