"""How the online algorithms make a rollout: sample K responses per prompt through the policy
(gathered once under FSDP2), score them (one reward or several, weighted), take the old-policy
and reference log-probs, and log the rollout's statistics. ``OnlineRLModule`` (``online.py``)
adds the options, the advantage / loss hooks and the minibatch updates on top.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from lightning_rlhf.algorithms.base import RLHFModule
from lightning_rlhf.losses.critic_free import truncated_rows, zero_variance_groups
from lightning_rlhf.losses.kl import kl_penalty, sequence_kl
from lightning_rlhf.losses.masked import masked_mean
from lightning_rlhf.models import response_logprobs
from lightning_rlhf.rl.buffer import Experience
from lightning_rlhf.rl.phases import timed
from lightning_rlhf.rl.rewards import (
    WeightedReward,
    load_rewards,
    normalize_rewards,
    reward_models,
)
from lightning_rlhf.rl.rollout import Rollout, generate, rank_seed
from lightning_rlhf.strategies import gathered, release, shard_causal_lm

log = logging.getLogger(__name__)


class RolloutModule(RLHFModule):
    """The rollout half of :class:`~lightning_rlhf.algorithms.online.OnlineRLModule`: it reads
    the options and the state (``reward_moments``, ``zero_variance_watch``, ``kl_controller``)
    that ``OnlineRLModule.__init__`` sets, and is not used on its own."""

    # --- the reward ---------------------------------------------------------------------------
    @property
    def reward_fn(self):
        """The reward callable ``(prompts, responses) -> (B,)``, built on first use on our device
        (kept out of ``nn.Module`` registration, so it is never trained or checkpointed)."""
        if self._reward_fn is None:
            hp = self.hparams
            self._reward_fn = load_rewards(
                hp.reward, hp.get("reward_weights"), where=type(self).__name__, device=self.device
            )
            mesh = getattr(self, "_device_mesh", None)
            for model in reward_models(self._reward_fn) if mesh is not None else []:
                shard_causal_lm(model, mesh["data_parallel"], offload=self.offload_frozen)
        return self._reward_fn

    # --- rollout ------------------------------------------------------------------------------
    def sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, **kw: Any) -> Rollout:
        """Sample one response per (already repeated) prompt with the configured options."""
        hp = self.hparams
        options = dict(
            max_new_tokens=hp.max_new_tokens,
            do_sample=True,
            temperature=hp.temperature,
            top_p=hp.top_p,
            top_k=hp.top_k,
        )
        options.update(kw)
        with gathered(self.policy, enabled=hp.rollout_gather == "once"):
            return generate(self.policy, self.tokenizer, prompt_ids, prompt_mask, **options)

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Raw rewards: (B,) fp32 on our device."""
        scores = self.reward_fn(prompts, responses).to(self.device, torch.float32)
        self._release_reward_models()
        return scores

    def _release_reward_models(self) -> None:
        """Under FSDP2, no gathered copy of a reward model outlives a scoring call."""
        for model in reward_models(self.reward_fn):
            release(model)

    def on_train_start(self) -> None:
        """Each rank samples its own rollouts: ranks > 0 reseed torch's generator from the run's
        seed and their rank (``rank_seed``; rank 0 keeps the run's stream, so a single process
        is unchanged). A resume then puts back every rank's saved state (``RNGState``)."""
        if self.global_rank > 0:
            torch.manual_seed(rank_seed(torch.initial_seed(), self.global_rank))

    def score_parts(
        self, prompts: list[str], responses: list[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Raw rewards (B,) fp32 on our device and, for several rewards, each one's (B,)
        unweighted scores by name (empty for one reward)."""
        fn = self.reward_fn
        if not isinstance(fn, WeightedReward) or len(fn.rewards) == 1:
            return self.score(prompts, responses), {}
        parts = fn.parts(prompts, responses)
        self._release_reward_models()
        return fn.total(parts).to(self.device, torch.float32), parts

    def logprobs(
        self, model: nn.Module, exp: Experience, *, entropy: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(N, T) response log-probs of ``exp`` under ``model`` at the sampling temperature (and
        the (N, T) entropy with ``entropy``); gradients flow if enabled."""
        out = response_logprobs(
            model,
            exp.input_ids,
            exp.attention_mask,
            exp.response_mask_full(),
            temperature=self.hparams.temperature,
            return_entropy=entropy,
        )
        p = exp.prompt_length
        return tuple(o[:, p:] for o in out) if entropy else out[:, p:]  # (N, T)

    def policy_logprobs(
        self, mb: Experience, *, entropy: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(M, T) log pi_theta of a minibatch with gradients (and the entropy with ``entropy``):
        the rollout's own forward under the on-policy shortcut, else a fresh one."""
        if mb.live_logprobs is None:
            return self.logprobs(self.policy, mb, entropy=entropy)
        return (mb.live_logprobs, mb.live_entropy) if entropy else mb.live_logprobs

    def _on_policy(self, exp: Experience) -> bool:
        """The shortcut is on and the update is one epoch of one minibatch."""
        hp = self.hparams
        size = hp.minibatch_size or exp.num_rows
        one_minibatch = max(1, size // exp.group_size) >= exp.num_groups
        return hp.on_policy_shortcut and hp.ppo_epochs == 1 and one_minibatch

    def reference_logprobs(self, exp: Experience) -> torch.Tensor:
        """(N, T) log pi_ref of the responses (the LoRA base when there is no reference copy)."""
        with self.reference_model() as ref:
            return self.logprobs(ref, exp)

    @torch.no_grad()
    def collect(self, batch: dict, timings: dict[str, float]) -> Experience:
        """Roll out, score and take old/reference log-probs for a batch of prompts.

        Args:
            batch: prompt batch: prompt_input_ids / prompt_attention_mask (G, P), prompt list.
        Returns:
            the :class:`Experience` of the G * K responses (advantages not yet computed).
        """
        k = self.group_size
        prompt_ids = batch["prompt_input_ids"].repeat_interleave(k, dim=0)  # (N, P)
        prompt_mask = batch["prompt_attention_mask"].repeat_interleave(k, dim=0)
        prompts = [p for p in batch["prompt"] for _ in range(k)]
        with timed(timings, "generate", self.device):
            rollout = self.sample(prompt_ids, prompt_mask)
        with timed(timings, "score", self.device):
            raw, parts = self.score_parts(prompts, rollout.responses)  # (N,), name -> (N,)
        input_ids, attention_mask, _ = rollout.sequences()  # (N, P + T)
        exp = Experience(
            input_ids=input_ids,
            attention_mask=attention_mask,
            prompt_length=prompt_ids.shape[1],
            response_ids=rollout.response_ids,
            mask=rollout.response_mask,
            old_logprobs=torch.empty(0),
            ref_logprobs=torch.empty(0),
            scores=raw,
            group_size=k,
            extra={
                "prompts": prompts,
                "responses": rollout.responses,
                "raw_scores": raw,
                "reward_parts": parts,
            },
        )
        with timed(timings, "logprobs", self.device):
            if self._on_policy(exp):
                with torch.enable_grad():
                    exp.live_logprobs, exp.live_entropy = self.logprobs(
                        self.policy, exp, entropy=True
                    )
                exp.old_logprobs, entropy = exp.live_logprobs.detach(), exp.live_entropy.detach()
            else:
                exp.old_logprobs, entropy = self.logprobs(self.policy, exp, entropy=True)
            exp.ref_logprobs = self.reference_logprobs(exp)
        if self.reward_moments is not None:  # every rank updates with every rank's rewards
            self.reward_moments.update(self._gather(raw).reshape(-1))
        exp.scores = normalize_rewards(
            raw, self.reward_moments, clip=self.hparams.reward_clip, update=False
        )
        self._log_rollout(exp, entropy)
        return exp

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` from every rank stacked on a new first dim (itself, (1, ...), alone)."""
        return self.all_gather(tensor) if self._trainer is not None else tensor[None]

    def _log_rollout(self, exp: Experience, entropy: torch.Tensor) -> None:
        """Reward, KL (k1 and k3 per sequence), entropy and length of the rollout."""
        mask = exp.mask
        seq_kl = sequence_kl(exp.old_logprobs, exp.ref_logprobs, mask)  # (N,)
        k3 = kl_penalty(exp.old_logprobs, exp.ref_logprobs, mask, "k3").sum(-1)  # (N,)
        # the KL controller sees the mean over all ranks' samples, and how many there were
        self.last_rollout_kl = float(self._gather(seq_kl.mean()).mean())
        self.last_rollout_size = exp.num_rows * (self._trainer.world_size if self._trainer else 1)
        raw = exp.extra["raw_scores"]
        stats = {
            "reward": raw.mean(),
            "reward_std": raw.std() if raw.numel() > 1 else raw.new_zeros(()),
            "score": exp.scores.mean(),
            "kl_k1": seq_kl.mean(),
            "kl_k3": k3.mean(),
            "kl_beta": self.kl_beta,
            "entropy": masked_mean(entropy, mask),
            "response_length": mask.sum(-1).float().mean(),
            "truncated_frac": truncated_rows(exp.response_ids, mask, self.tokenizer.eos_token_id)
            .float()
            .mean(),
        }
        parts = exp.extra.get("reward_parts", {})  # name -> (N,), with several rewards
        stats.update({f"reward/{name}": part.mean() for name, part in parts.items()})
        if exp.group_size > 1:
            stats["zero_variance_frac"] = self._watch_zero_variance(raw.view(-1, exp.group_size))
        self.log_stats("rollout", stats, prog_bar=False, batch_size=exp.num_rows)

    def _log_counters(self) -> None:
        """``rollout`` (rollouts done, this one included) and ``optimizer_step`` (optimiser steps
        done, the count ``trainer.max_steps`` limits) beside each step's metrics; Lightning's own
        ``step`` column of ``metrics.csv`` counts the rollouts before this one."""
        if self._trainer is None:
            return
        counters = {
            "rollout": self.trainer.fit_loop.epoch_loop.batch_progress.total.ready,
            "optimizer_step": self.global_step,
        }
        for name, value in counters.items():
            self.log(name, float(value), on_step=True, on_epoch=False, batch_size=1)

    def _watch_zero_variance(self, rewards: torch.Tensor) -> torch.Tensor:
        """The fraction of (G, K) groups with equal rewards; warn once on a run of all-zero."""
        frac = zero_variance_groups(rewards).float().mean()
        if self.zero_variance_watch.update(bool(frac == 1.0)):
            log.warning(
                f"{type(self).__name__}: every group had equal rewards in "
                f"{self.zero_variance_watch.streak} rollouts in a row; advantages are zero and "
                "the policy is not learning (check the reward, or raise temperature / "
                "samples_per_prompt)"
            )
        return frac
