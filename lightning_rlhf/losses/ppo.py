"""PPO's pieces (Schulman et al. 2017) shared by token-level PPO and MA-PPO: (macro-action) GAE
advantages, the clipped policy surrogate, the clipped value loss and advantage whitening.

Advantages and the policy loss run on ``kernels`` (``macro_gae``, ``ppo_clip_loss``: token or
macro-action ratios, fused on GPU); algorithms call these functions, not the kernels. The value
loss is the clipped one of the OpenAI baselines / Ziegler et al. 2019 PPO, shared by token-level
PPO and MA-PPO (per token, against the broadcast macro return).
"""

from __future__ import annotations

import torch

import kernels
from lightning_rlhf.losses.masked import masked_mean


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ratio_level: str = "token",
    segment_ids: torch.Tensor | None = None,
    reduction: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate -min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A), with
    rho per token or per macro action (``ratio_level="segment"``: exp of the segment's summed
    log-ratio, the MA-RLHF paper's ratio). All tensors (N, T); see ``kernels.ppo_clip_loss``.

    Returns:
        fp32 loss; detached stats clip_frac, approx_kl, ratio_mean, ratio_min, ratio_max.
    """
    return kernels.ppo_clip_loss(
        logprobs, old_logprobs, advantages, mask, clip_low=clip_low, clip_high=clip_high,
        ratio_level=ratio_level, segment_ids=segment_ids, reduction=reduction,
    )  # fmt: skip


@torch.no_grad()
def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    segment_ids: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: bool = False,
    **aggregation: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over macro actions (one token per segment = token-level GAE), broadcast to tokens.

    Args:
        rewards, values, mask, segment_ids: (N, T) token rewards, critic values, response mask
            and macro-action ids (``kernels.macro_gae``).
        gamma, lam: discount and GAE lambda; whiten: :func:`masked_whiten` the advantages.
        aggregation: ``value_agg`` / ``reward_agg`` of ``kernels.macro_gae``.
    Returns:
        advantages (N, T) (0 outside ``mask``) and returns (N, T).
    """
    advantages, returns = kernels.macro_gae(
        rewards, values, mask, segment_ids, gamma=gamma, lam=lam, **aggregation
    )
    if whiten:
        advantages = masked_whiten(advantages, mask)
    return torch.where(mask.bool(), advantages, 0.0), returns


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss 0.5 * max((V - Ret)^2, (clip(V, V_old - c, V_old + c) - Ret)^2).

    Token mean over the valid tokens of the whole batch; ``clip=None`` gives the plain
    0.5 * (V - Ret)^2.

    Args:
        values: (B, T) current value predictions (with grad).
        old_values: (B, T) predictions at rollout time (detached).
        returns: (B, T) GAE returns (detached).
        mask: (B, T) nonzero at valid response tokens.
        clip: the clip range c around ``old_values``, or None.
    Returns:
        fp32 loss; detached stats: ``loss``, ``clip_frac`` (fraction of tokens where the clipped
        term is the larger, i.e. the gradient is cut), ``explained_variance``
        (1 - Var[Ret - V] / Var[Ret] over valid tokens), ``value_mean``, ``return_mean``.
    """
    for name, t in (("old_values", old_values), ("returns", returns), ("mask", mask)):
        if t.shape != values.shape:
            raise ValueError(
                f"value_loss: {name} must have the shape of values {tuple(values.shape)}, "
                f"got {tuple(t.shape)}"
            )
    valid = mask.bool()
    v = torch.where(valid, values.float(), 0.0)  # padding garbage (even inf) never reaches grads
    ret = torch.where(valid, returns.detach().float(), 0.0)
    unclipped = (v - ret).square()
    if clip is None:
        per_token, clipped_active = unclipped, torch.zeros_like(valid)
    else:
        old = torch.where(valid, old_values.detach().float(), 0.0)
        v_clipped = old + (v - old).clamp(-clip, clip)
        clipped = (v_clipped - ret).square()
        per_token, clipped_active = torch.maximum(unclipped, clipped), clipped > unclipped
    loss = 0.5 * masked_mean(per_token, valid)
    stats = {
        "loss": loss.detach(),
        "clip_frac": masked_mean(clipped_active.float(), valid),
        "explained_variance": explained_variance(v.detach(), ret, valid),
        "value_mean": masked_mean(v.detach(), valid),
        "return_mean": masked_mean(ret, valid),
    }
    return loss, stats


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """1 - Var[Ret - V] / Var[Ret] over the valid tokens (0 when Var[Ret] is 0).

    Args:
        values, returns, mask: (B, T).
    Returns:
        fp32 scalar (detached): 1 is a perfect critic, 0 no better than a constant.
    """
    return explained_variance_from_moments(variance_moments(values, returns, mask))


def variance_moments(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The sums behind :func:`explained_variance`, to add up across ranks before dividing.

    Args:
        values, returns, mask: (B, T).
    Returns:
        (5,) fp64: number of valid tokens, sum Ret, sum Ret^2, sum (Ret - V), sum (Ret - V)^2.
    """
    valid = mask.bool()
    ret = returns.detach().double()[valid]
    resid = ret - values.detach().double()[valid]
    count = ret.new_tensor(float(ret.numel()))
    return torch.stack([count, ret.sum(), ret.square().sum(), resid.sum(), resid.square().sum()])


def explained_variance_from_moments(moments: torch.Tensor) -> torch.Tensor:
    """1 - Var[Ret - V] / Var[Ret] from (summed) :func:`variance_moments` (5,): fp32 scalar,
    0 when there is no valid token or Var[Ret] is 0."""
    n, s_ret, ss_ret, s_res, ss_res = moments.double().unbind()
    if n <= 0:
        return moments.new_zeros((), dtype=torch.float32)
    var_ret = ss_ret / n - (s_ret / n).square()
    var_res = ss_res / n - (s_res / n).square()
    if var_ret <= 1e-12 * max(float(ss_ret / n), 1e-30):  # constant returns (up to rounding)
        return moments.new_zeros((), dtype=torch.float32)
    return (1.0 - var_res / var_ret).float()


@torch.no_grad()
def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean) over its valid entries (PPO's optional
    advantage whitening; MA-RLHF does not whiten).

    Args:
        x: (B, T) e.g. advantages; mask: (B, T).
        shift_mean: subtract the mean (else only divide by the std, keeping the sign of x).
    Returns:
        (B, T) fp32, 0 outside ``mask``; unchanged (masked) when fewer than 2 entries are valid.
    """
    valid = mask.bool()
    x = torch.where(valid, x.float(), 0.0)
    n = int(valid.sum())
    if n < 2:
        return x
    mean = x.sum() / n
    var = torch.where(valid, (x - mean).square(), 0.0).sum() / n
    out = (x - mean) if shift_mean else x
    return torch.where(valid, out * torch.rsqrt(var + eps), 0.0)
