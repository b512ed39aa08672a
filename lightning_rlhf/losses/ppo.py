"""PPO's value loss and advantage whitening (Schulman et al. 2017; ALGORITHMS.md 4 and 5).

The policy loss is ``kernels.ppo_clip_loss`` itself (token or macro-action ratios, fused on GPU);
it is not wrapped here. The value loss is the clipped one of the OpenAI baselines / Ziegler et al.
2019 PPO, shared by token-level PPO and MA-PPO (per token, against the broadcast macro return).
"""

from __future__ import annotations

import torch


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the True entries of ``valid`` (0 when there are none)."""
    return torch.where(valid, x, 0.0).sum() / valid.sum().clamp(min=1)


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
    loss = 0.5 * _masked_mean(per_token, valid)
    stats = {
        "loss": loss.detach(),
        "clip_frac": _masked_mean(clipped_active.float(), valid),
        "explained_variance": explained_variance(v.detach(), ret, valid),
        "value_mean": _masked_mean(v.detach(), valid),
        "return_mean": _masked_mean(ret, valid),
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
    valid = mask.bool()
    ret = returns.detach().float()[valid]
    resid = ret - values.detach().float()[valid]
    var = ret.var(unbiased=False) if ret.numel() > 0 else ret.new_zeros(())
    if ret.numel() == 0 or var <= 0:
        return ret.new_zeros(())
    return 1.0 - resid.var(unbiased=False) / var


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
