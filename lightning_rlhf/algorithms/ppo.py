"""PPO with a critic (Schulman et al. 2017; the RLHF recipe of Ziegler et al. 2019 and Ouyang et
al. 2022) and MA-PPO, PPO over macro actions (Chai et al., "MA-RLHF", ICLR 2025).

Token rewards: -beta * KL_t plus the sequence score on the last token (``rl.kl``); advantages,
policy and value losses from ``losses.ppo`` (macro-action GAE, where token-level GAE is one token
per segment; the clipped surrogate; the clipped value loss). See ``losses/README.md``, PPO and
MA-PPO.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_rlhf.algorithms.online import OnlineRLModule
from lightning_rlhf.checks import check_range
from lightning_rlhf.losses.ppo import (
    explained_variance_from_moments,
    gae_advantages,
    policy_loss,
    value_loss,
    variance_moments,
)
from lightning_rlhf.models import ModelConfig
from lightning_rlhf.models.critic import ValueModel, critic_from_policy, critic_from_reward_model
from lightning_rlhf.rl.buffer import Experience
from lightning_rlhf.rl.kl import KLKind, token_level_rewards
from lightning_rlhf.rl.macro_actions import segment
from lightning_rlhf.strategies import shard_value_model


class PPO(OnlineRLModule):
    """Token-level PPO with a value model.

    Args:
        critic_from: "policy" (default: the critic copies the policy's backbone; the reward may be
            a Python scorer or a reward model with another tokenizer, so the policy is the one
            checkpoint that always fits) or a reward-model export directory (same tokenizer).
        critic_lr: the critic's learning rate (None: ``lr``).
        vf_coef: weight of the value loss.
        value_clip: value-loss clip range around the rollout-time values (None: unclipped).
        clip_eps: policy ratio clip range (``clip_low`` / ``clip_high`` make it asymmetric).
        gamma, lam: GAE discount and lambda.
        whiten_advantages: normalise advantages over each rollout batch (PPO's usual option;
            MA-PPO's default too, so the two compare like with like).
        kl_kind: per-token KL estimator in the reward ("k1" as in Ziegler et al.).
        The rest: see :class:`OnlineRLModule`.
    """

    def __init__(
        self,
        policy: ModelConfig,
        critic_from: str = "policy",
        critic_lr: float | None = None,
        vf_coef: float = 0.1,
        value_clip: float | None = 0.2,
        clip_eps: float = 0.2,
        gamma: float = 1.0,
        lam: float = 0.95,
        whiten_advantages: bool = True,
        kl_kind: KLKind = "k1",
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, **kwargs)
        check_range(self, "critic_lr", critic_lr, gt=0)
        check_range(self, "vf_coef", vf_coef, ge=0)
        check_range(self, "value_clip", value_clip, gt=0)
        check_range(self, "clip_eps", clip_eps, gt=0, lt=1)
        check_range(self, "gamma", gamma, ge=0, le=1)
        check_range(self, "lam", lam, ge=0, le=1)
        self.critic: ValueModel | None = None

    # --- PPO's own pieces ---------------------------------------------------------------------
    def build_frozen(self) -> None:
        """The reference (see the base) and the trainable critic."""
        super().build_frozen()
        if self.hparams.critic_from == "policy":
            self.critic = critic_from_policy(self.policy, self.policy_config, self.tokenizer)
        else:
            self.critic = critic_from_reward_model(self.hparams.critic_from, self.tokenizer)

    def shard_models(self, mesh: Any) -> None:
        """FSDP2: the critic is sharded like the policy (its blocks, then the whole critic), so
        its gradients are reduce-scattered over the ranks and its optimiser state sharded."""
        super().shard_models(mesh)
        shard_value_model(self.critic, mesh)

    def trainable_groups(self) -> list[dict[str, Any]]:
        groups = super().trainable_groups()
        critic = {"params": [p for p in self.critic.parameters() if p.requires_grad]}
        if self.hparams.critic_lr is not None:
            critic["lr"] = self.hparams.critic_lr
        return groups + [critic]

    def segments(self, exp: Experience) -> torch.Tensor:
        """Macro-action ids: PPO's are one token each, (N, T) = arange(T)."""
        n, t = exp.mask.shape
        ids = torch.arange(t, device=exp.mask.device).expand(n, t)  # (N, T)
        return torch.where(exp.mask.bool(), ids, -1)

    def gae_options(self) -> dict[str, Any]:
        """Keyword arguments of ``losses.ppo.gae_advantages`` beyond gamma and lambda."""
        return {}

    @property
    def ratio_level(self) -> str:
        return "token"

    # --- advantages and loss ------------------------------------------------------------------
    @torch.no_grad()
    def compute_advantages(self, exp: Experience, timings: dict[str, float]) -> None:
        """Token rewards -> (macro) GAE -> advantages/returns; values from the critic."""
        hp = self.hparams
        mask = exp.mask
        values = self.critic.response_values(exp.input_ids, exp.attention_mask, exp.prompt_length)
        exp.values = values * mask  # (N, T)
        rewards = token_level_rewards(
            exp.scores, exp.old_logprobs, exp.ref_logprobs, mask, beta=self.kl_beta, kind=hp.kl_kind
        )  # (N, T)
        exp.segment_ids = self.segments(exp)
        exp.advantages, exp.returns = gae_advantages(
            rewards, exp.values, mask, exp.segment_ids, gamma=hp.gamma, lam=hp.lam,
            whiten=hp.whiten_advantages, **self.gae_options(),
        )  # fmt: skip
        self._log_critic(exp)

    def _log_critic(self, exp: Experience) -> None:
        """``critic/explained_variance``: 1 - Var[Ret - V] / Var[Ret] of the rollout-time values
        against the GAE returns, over every rank's valid tokens (the critic before this rollout's
        updates, so it is never flattered by fitting the batch it is scored on)."""
        if self._trainer is None:  # a module driven by hand (tests): nowhere to log
            return
        moments = self._gather(variance_moments(exp.values, exp.returns, exp.mask))  # (W, 5)
        ev = explained_variance_from_moments(moments.reshape(-1, 5).sum(0))
        self.log_stats("critic", {"explained_variance": ev}, batch_size=exp.num_rows)

    def loss(self, mb: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Clipped surrogate + vf_coef * clipped value loss."""
        hp = self.hparams
        logprobs = self.policy_logprobs(mb)  # (M, T)
        pg_loss, pg = policy_loss(
            logprobs, mb.old_logprobs, mb.advantages, mb.mask,
            clip_low=self.clip_range[0], clip_high=self.clip_range[1],
            ratio_level=self.ratio_level, segment_ids=mb.segment_ids,
        )  # fmt: skip
        values = self.critic.response_values(mb.input_ids, mb.attention_mask, mb.prompt_length)
        vf_loss, vf = value_loss(values, mb.values, mb.returns, mb.mask, clip=hp.value_clip)
        loss = pg_loss + hp.vf_coef * vf_loss
        stats = {
            "loss": loss.detach(),
            "policy_loss": pg_loss.detach(),
            "value_loss": vf_loss.detach(),
            "clip_frac": pg["clip_frac"],
            "approx_kl": pg["approx_kl"],
            "ratio_mean": pg["ratio_mean"],
            "value_clip_frac": vf["clip_frac"],
            "explained_variance": vf["explained_variance"],
        }
        return loss, stats


class MAPPO(PPO):
    """MA-PPO: PPO over macro actions (Chai et al., ICLR 2025). How it departs from PPO:

    1. Responses are cut into macro actions by ``segmenter`` (fixed n-grams by default, n = 5;
       randomized, perplexity, punctuation; the last response token is always its own macro).
    2. GAE runs over macro steps: V_k aggregates the token values of macro k (``value_agg``,
       "mean" = the paper's equal weighting), R_k sums its token rewards (``reward_agg``; the
       released code averages, which divides the KL coefficient by ~n); A_k and Ret_k are
       broadcast to every token of macro k.
    3. Advantages are whitened by default, as PPO's are, so that a PPO / MA-PPO comparison
       changes only the credit assignment; the paper does not whiten (``whiten_advantages:
       false``). See ``losses/README.md``, MA-PPO.
    4. The ratio is per token with the broadcast macro advantage (released code) or, with
       ``ratio_level="segment"``, one ratio per macro action (the paper's product of token ratios).
    With ``segmenter="fixed", n=1`` every one of these is a no-op and MA-PPO is exactly PPO.

    Args:
        segmenter: the termination rule.
        n: macro-action length of the fixed rule.
        segmenter_options: more keywords of ``rl.macro_actions.segment`` (seed, lengths,
            repeats, ...).
        value_agg, reward_agg, ratio_level: see above.
        The rest (``whiten_advantages`` included): see :class:`PPO`.
    """

    def __init__(
        self,
        policy: ModelConfig,
        segmenter: Literal["fixed", "randomized", "perplexity", "punctuation", "parsing"] = "fixed",
        n: int = 5,
        segmenter_options: dict[str, Any] | None = None,
        value_agg: Literal["mean", "position", "first"] = "mean",
        reward_agg: Literal["sum", "mean"] = "sum",
        ratio_level: Literal["token", "segment"] = "token",
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, **kwargs)
        check_range(self, "n", n, ge=1)

    def segments(self, exp: Experience) -> torch.Tensor:
        """(N, T) macro-action ids of the responses under the configured rule."""
        hp = self.hparams
        options = dict(hp.segmenter_options or {})
        if hp.segmenter == "perplexity":
            options["ref_logprobs"] = exp.ref_logprobs
        if hp.segmenter == "punctuation":
            options["tokenizer"] = self.tokenizer
        if hp.segmenter == "randomized":  # fresh, reproducible cuts for every rollout
            options["seed"] = options.get("seed", hp.seed) * 1_000_003 + self.global_step
        return segment(exp.response_ids, exp.mask, rule=hp.segmenter, n=hp.n, **options)

    def gae_options(self) -> dict[str, Any]:
        return {"value_agg": self.hparams.value_agg, "reward_agg": self.hparams.reward_agg}

    @property
    def ratio_level(self) -> str:
        return self.hparams.ratio_level
