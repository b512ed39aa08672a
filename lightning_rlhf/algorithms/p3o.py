"""P3O: pairwise proximal policy optimisation (Wu et al. 2023, arXiv:2310.00212; losses/README.md
§6).

How it departs from PPO: a contextual bandit, the whole response is one action; two responses per
prompt and no critic; the update follows the reward *difference* of the pair (invariant to any
per-prompt reward shift); the KL to the reference is sequence level and folded into the reward
gap; sequence ratios clipped separately (V1) or jointly (V2); rewards clipped to +-10 and divided
by a running std; each rollout buffer gets ``ppo_epochs`` (4) epochs and is then dropped.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_rlhf.algorithms.online import OnlineRLModule
from lightning_rlhf.checks import check_range
from lightning_rlhf.losses.masked import masked_sum
from lightning_rlhf.losses.p3o import p3o_loss
from lightning_rlhf.models import ModelConfig
from lightning_rlhf.rl.buffer import Experience


class P3O(OnlineRLModule):
    """P3O with two samples per prompt.

    Args:
        variant: "v1" (separate clipping) or "v2" (joint clipping).
        clip_eps: ratio clip range (symmetric only: ``clip_low`` and ``clip_high`` must agree);
            weight_cap: importance-weight cap C.
        kl_beta: the sequence-KL coefficient folded into the rewards.
        ppo_epochs, reward_clip, normalize_reward: the paper's 4 epochs, +-10, running std.
        The rest: see :class:`OnlineRLModule` (``samples_per_prompt`` must stay 2).
    """


    def __init__(
        self,
        policy: ModelConfig,
        variant: Literal["v1", "v2"] = "v1",
        clip_eps: float = 0.2,
        weight_cap: float = 10.0,
        samples_per_prompt: int = 2,
        ppo_epochs: int = 4,
        kl_beta: float = 0.05,
        reward_clip: float | None = 10.0,
        normalize_reward: bool = True,
        **kwargs: Any,
    ) -> None:
        if samples_per_prompt != 2:
            raise ValueError(f"P3O: samples_per_prompt must be 2 (pairs), got {samples_per_prompt}")
        super().__init__(
            policy,
            samples_per_prompt=samples_per_prompt,
            ppo_epochs=ppo_epochs,
            kl_beta=kl_beta,
            reward_clip=reward_clip,
            normalize_reward=normalize_reward,
            **kwargs,
        )
        check_range(self, "clip_eps", clip_eps, gt=0, lt=1)
        check_range(self, "weight_cap", weight_cap, ge=1)
        if self.clip_range[0] != self.clip_range[1]:
            raise ValueError(f"P3O: its objective clips symmetrically; got clip_low, clip_high = "
                             f"{self.clip_range}")  # fmt: skip

    def compute_advantages(self, exp: Experience, timings: dict[str, float]) -> None:
        """Nothing to precompute: the pair's reward gap is formed inside the loss (it holds the
        current policy's KL term)."""

    def loss(self, mb: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``p3o_loss`` on the (M/2, 2) pairs of the minibatch."""
        hp = self.hparams
        logps = masked_sum(self.policy_logprobs(mb), mb.mask).view(-1, 2)  # (G, 2)
        old = masked_sum(mb.old_logprobs, mb.mask).view(-1, 2)
        ref = masked_sum(mb.ref_logprobs, mb.mask).view(-1, 2)
        rewards = mb.scores.view(-1, 2)
        loss, stats = p3o_loss(
            logps[:, 0], old[:, 0], ref[:, 0], logps[:, 1], old[:, 1], ref[:, 1],
            rewards[:, 0], rewards[:, 1],
            variant=hp.variant, clip_eps=self.clip_range[0], kl_beta=self.kl_beta,
            weight_cap=hp.weight_cap,
        )  # fmt: skip
        return loss, {"loss": loss.detach(), **stats}
