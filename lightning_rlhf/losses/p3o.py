"""P3O: Pairwise Proximal Policy Optimization (Wu et al. 2023, arXiv:2310.00212; ALGORITHMS.md 6).

How P3O departs from PPO: a contextual bandit (one action = the whole response), two samples per
prompt and no critic; the policy gradient is the pairwise (r1 - r2) / 2 * grad(l1 - l2), so any
per-prompt reward shift cancels; the KL to the reference is sequence level and folded into the
reward gap; ratios are sequence ratios, clipped separately (V1) or jointly (V2).
"""

from __future__ import annotations

import torch

import kernels


def p3o_loss(
    logps1: torch.Tensor,
    old_logps1: torch.Tensor,
    ref_logps1: torch.Tensor,
    logps2: torch.Tensor,
    old_logps2: torch.Tensor,
    ref_logps2: torch.Tensor,
    rewards1: torch.Tensor,
    rewards2: torch.Tensor,
    *,
    variant: str = "v1",
    clip_eps: float = 0.2,
    kl_beta: float = 0.05,
    weight_cap: float = 10.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The P3O clipped pairwise loss, mean over pairs (``kernels.p3o_clip_objective``).

    Delta = sg[r~1 - r~2] with r~i = r_i - kl_beta * (l_theta(y_i) - l_ref(y_i));
    rho_i = exp(l_theta(y_i) - l_old(y_i)); rho_bar = sg[clip(rho, 1/C, C)], C = ``weight_cap``.
    V1: 1/2 [max(-D rho_bar2 rho1, -D rho_bar2 clip(rho1, 1 +- eps))
    + max(D rho_bar1 rho2, D rho_bar1 clip(rho2, 1 +- eps))].
    V2: u = l_theta(y1) - l_theta(y2), w = sg[clip(rho1 rho2, 1/C, C)],
    max(-D w u, -D w clip(u, u_old +- eps)).
    At rho = 1 both give the gradient -Delta/2 * grad(l1 - l2) (V1) and -Delta * grad(l1 - l2)
    (V2, which has no 1/2). Rewards are used as given: clip them and divide by a running std first
    (``lightning_rlhf.rl.rewards.normalize_rewards``), as the paper does.

    Args:
        logps1, logps2: (B,) sequence log-prob sums l_theta(y|x) (with grad).
        old_logps1, old_logps2: (B,) the same under the rollout policy pi_old.
        ref_logps1, ref_logps2: (B,) the same under the reference pi_ref.
        rewards1, rewards2: (B,) scalar rewards of y1 and y2.
        variant: "v1" (separate clipping) | "v2" (joint clipping).
    Returns:
        fp32 loss; detached stats: delta_mean, clip_frac, ratio1_mean, ratio2_mean, kl_mean.
        The kernel checks the shapes and the variant (one-line errors naming the argument).
    """
    return kernels.p3o_clip_objective(
        logps1, old_logps1, ref_logps1, logps2, old_logps2, ref_logps2, rewards1, rewards2,
        variant=variant, clip_eps=clip_eps, kl_beta=kl_beta, weight_cap=weight_cap,
    )  # fmt: skip
