"""The KL penalty in the reward and the KL coefficient controllers.

The PPO per-token reward with the sequence score on the last token (losses/README.md §4; the
per-token estimators themselves are ``losses.kl``), and the fixed / adaptive target-KL
controllers of Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences".
"""

from __future__ import annotations

import math

import torch

from lightning_rlhf.losses.kl import KLKind, kl_penalty


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last nonzero position of each row of ``mask`` (B, T); -1 for an empty row."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, T)
    return torch.where(mask.bool(), pos, -1).max(dim=1).values  # (B,)


@torch.no_grad()
def token_level_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    kind: KLKind = "k1",
) -> torch.Tensor:
    """PPO's per-token reward: r_t = -beta * kl_t, plus the sequence score on the last token.

    The last response token is found per row from ``mask``, so left- and right-padded rows both
    work. A row with no valid token gets all zeros (its score is dropped).

    Args:
        scores: (B,) sequence rewards (already clipped / normalised as wanted).
        logprobs: (B, T) log pi_old(y_t) (the rollout policy); ref_logprobs: (B, T); mask: (B, T).
        beta: KL coefficient (>= 0).
        kind: the KL estimator, see :func:`kl_penalty`.
    Returns:
        (B, T) fp32 rewards, 0 outside ``mask``. No gradient.
    """
    if scores.shape != (logprobs.shape[0],):
        raise ValueError(
            f"token_level_rewards: scores must be (B,) = ({logprobs.shape[0]},), "
            f"got {tuple(scores.shape)}"
        )
    if not bool(torch.isfinite(scores).all()):
        bad = int(torch.nonzero(~torch.isfinite(scores))[0, 0])
        raise ValueError(f"token_level_rewards: non-finite score {scores[bad].item()} in row {bad}")
    rewards = -beta * kl_penalty(logprobs, ref_logprobs, mask, kind)  # (B, T)
    last = last_token_index(mask)  # (B,)
    rows = torch.nonzero(last >= 0).squeeze(1)
    rewards[rows, last[rows]] += scores[rows].float()
    return rewards


class FixedKLController:
    """A constant KL coefficient ``beta``; ``update`` does nothing."""

    def __init__(self, beta: float) -> None:
        if beta < 0 or not math.isfinite(beta):
            raise ValueError(f"FixedKLController: beta must be finite and >= 0, got {beta}")
        self.beta = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op (kept for the controller interface)."""

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])


class AdaptiveKLController(FixedKLController):
    """Target-KL controller of Ziegler et al. 2019 (section 2.2).

    e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_steps / horizon). ``n_steps``
    is the number of samples (sequences) the KL was measured on, so ``horizon`` is in samples,
    as in the paper (horizon 10000).

    Args:
        init_beta: starting coefficient (> 0, else it can never move).
        target: the KL (nats per sequence) to steer towards.
        horizon: how many samples it takes to move beta by a factor up to ~e^0.2.
    """

    def __init__(self, init_beta: float, target: float, horizon: int = 10000) -> None:
        super().__init__(init_beta)
        if init_beta <= 0 or target <= 0 or horizon <= 0:
            raise ValueError(
                "AdaptiveKLController: init_beta, target and horizon must be > 0, got "
                f"{init_beta}, {target}, {horizon}"
            )
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move beta towards the target after measuring ``current_kl`` on ``n_steps`` samples."""
        if not math.isfinite(current_kl):
            raise ValueError(f"AdaptiveKLController.update: current_kl is {current_kl}")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon
