"""P3O: Pairwise Proximal Policy Optimization (Wu et al. 2023, arXiv:2310.00212; losses/README.md
§6).

How P3O departs from PPO: a contextual bandit (one action = the whole response), two samples per
prompt and no critic; the policy gradient is the pairwise (r1 - r2) / 2 * grad(l1 - l2), so any
per-prompt reward shift cancels; the KL to the reference is sequence level and folded into the
reward gap; ratios are sequence ratios, clipped separately (V1) or jointly (V2).
"""

from __future__ import annotations

import torch

from kernels import check_choice, check_same_shape


def _p3o_delta(l1, ref1, l2, ref2, rewards1, rewards2, kl_beta):
    """Delta = sg[r~1 - r~2], r~i = r_i - beta * (l_theta(y_i) - l_ref(y_i)): (B,) fp32."""
    r1 = rewards1.float() - kl_beta * (l1 - ref1.float())
    r2 = rewards2.float() - kl_beta * (l2 - ref2.float())
    return (r1 - r2).detach()


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
    """The P3O clipped pairwise loss, mean over pairs.

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
        One-line ValueErrors name a wrong shape or variant.
    """
    check_choice("variant", variant, ("v1", "v2"))
    check_same_shape(
        "logps1", logps1, dims=1, old_logps1=old_logps1, ref_logps1=ref_logps1, logps2=logps2,
        old_logps2=old_logps2, ref_logps2=ref_logps2, rewards1=rewards1, rewards2=rewards2,
    )  # fmt: skip
    l1, l2 = logps1.float(), logps2.float()
    o1, o2 = old_logps1.detach().float(), old_logps2.detach().float()
    delta = _p3o_delta(l1, ref_logps1, l2, ref_logps2, rewards1, rewards2, kl_beta)
    log_rho1, log_rho2 = l1 - o1, l2 - o2
    if variant == "v1":
        rho1, rho2 = log_rho1.exp(), log_rho2.exp()
        bar1, bar2 = (r.detach().clamp(1.0 / weight_cap, weight_cap) for r in (rho1, rho2))
        lo, hi = 1.0 - clip_eps, 1.0 + clip_eps
        un1, cl1 = -delta * bar2 * rho1, -delta * bar2 * rho1.clamp(lo, hi)
        un2, cl2 = delta * bar1 * rho2, delta * bar1 * rho2.clamp(lo, hi)
        per_pair = 0.5 * (torch.maximum(un1, cl1) + torch.maximum(un2, cl2))
        clipped = ((cl1 > un1).float() + (cl2 > un2).float()) / 2
    else:
        u, u_old = l1 - l2, o1 - o2
        w = (log_rho1 + log_rho2).detach().exp().clamp(1.0 / weight_cap, weight_cap)
        un = -delta * w * u
        cl = -delta * w * torch.clamp(u, u_old - clip_eps, u_old + clip_eps)
        per_pair = torch.maximum(un, cl)
        clipped = (cl > un).float()
    kl = torch.cat([l1 - ref_logps1.float(), l2 - ref_logps2.float()]).detach()
    stats = {
        "delta_mean": delta.mean(),
        "clip_frac": clipped.mean().detach(),
        "ratio1_mean": log_rho1.detach().exp().mean(),
        "ratio2_mean": log_rho2.detach().exp().mean(),
        "kl_mean": kl.mean(),
    }
    return per_pair.mean(), stats
