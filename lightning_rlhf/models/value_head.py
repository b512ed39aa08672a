"""A-LoL's value estimate V(x) (Baheti et al., "Leftover Lunch", ICLR 2024; losses/README.md §2).

One learned query vector attends (multi-head, with a key padding mask) over the FROZEN reference
LM's last hidden states at the prompt tokens, then Linear -> sigmoid * max_value. It is fitted
once, before policy training, by MSE against rewards of the reference's own responses; the best
epoch by held-out MSE is kept and the head is used in eval mode afterwards (no dropout).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_rlhf.models.scoring import decoder_hidden_states


class ValueHead(nn.Module):
    """V(x) in [0, max_value] from the prompt's hidden states.

    Args:
        hidden_size: H, the reference LM's hidden size.
        num_heads: attention heads (must divide ``attn_dim``).
        attn_dim: D, width of the attention; None keeps H (no input projection), else a
            Linear(H, D) projects the hidden states first.
        max_value: the reward's upper bound; the output is ``sigmoid(.) * max_value``.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int = 4,
        attn_dim: int | None = None,
        max_value: float = 1.0,
    ) -> None:
        super().__init__()
        dim = attn_dim or hidden_size
        if dim % num_heads:
            raise ValueError(f"ValueHead: num_heads={num_heads} must divide attn_dim={dim}")
        self.max_value = float(max_value)
        self.proj = nn.Linear(hidden_size, dim) if attn_dim else nn.Identity()
        self.query = nn.Parameter(torch.randn(1, 1, dim) / math.sqrt(dim))
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=0.0, batch_first=True)
        self.out = nn.Linear(dim, 1)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: hidden (B, P, H) prompt hidden states; mask (B, P) 1 on real prompt tokens.
        Returns: (B,) fp32 values in [0, max_value]."""
        if not mask.bool().any(dim=1).all():
            raise ValueError("ValueHead: a prompt row has no real token (all-zero mask)")
        keys = self.proj(hidden.to(self.out.weight.dtype))  # (B, P, D)
        query = self.query.expand(keys.shape[0], -1, -1)  # (B, 1, D)
        pooled, _ = self.attn(
            query, keys, keys, key_padding_mask=~mask.bool(), need_weights=False
        )  # (B, 1, D)
        return (torch.sigmoid(self.out(pooled[:, 0]))[:, 0] * self.max_value).float()


@torch.no_grad()
def prompt_hidden_states(
    model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
) -> torch.Tensor:
    """Last hidden states of a (frozen) causal LM's decoder over the prompt tokens.

    Args:
        model: an HF causal LM or a peft wrapper (the caller disables adapters if needed).
        prompt_ids: (B, P) left- or right-padded; prompt_mask: (B, P).
    Returns:
        (B, P, H) hidden states (no lm_head, so no (B, P, V) logits).
    """
    return decoder_hidden_states(model, prompt_ids, prompt_mask)


@dataclass
class ValueFit:
    """Result of :func:`fit_value_head`: the best head (eval mode, frozen) and its curve."""

    head: ValueHead
    best_epoch: int
    holdout_mse: float
    train_mse: float
    history: list[dict] = field(default_factory=list)


def _mse(head: ValueHead, feats: list[tuple[torch.Tensor, torch.Tensor]], y: torch.Tensor) -> float:
    """Mean squared error of ``head`` over feature batches ``feats`` against targets ``y`` (N,)."""
    with torch.no_grad():
        pred = torch.cat([head(h, m) for h, m in feats])  # (N,)
    return float(((pred - y.to(pred.device)) ** 2).mean())


def fit_value_head(
    head: ValueHead,
    features: list[tuple[torch.Tensor, torch.Tensor]],
    targets: torch.Tensor,
    *,
    epochs: int = 20,
    lr: float = 1e-3,
    holdout_fraction: float = 0.2,
    seed: int = 0,
) -> ValueFit:
    """Fit ``head`` by MSE on feature batches; keep the epoch with the lowest held-out MSE.

    Args:
        features: list of ((b, P, H) hidden states, (b, P) mask) batches, N rows in all.
        targets: (N,) regression targets (rewards of the reference's responses).
        holdout_fraction: share of the batches (at least one, when there are two or more) held
            out to select the epoch; with a single batch it is used for both.
    Returns:
        :class:`ValueFit` with the best head in eval mode, gradients off.
    """
    sizes = [h.shape[0] for h, _ in features]
    if sum(sizes) != targets.shape[0]:
        raise ValueError(
            f"fit_value_head: {sum(sizes)} feature rows but {targets.shape[0]} targets"
        )
    ys = list(torch.split(targets.float(), sizes))
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed)).tolist()
    n_hold = min(len(order) - 1, max(1, round(holdout_fraction * len(order)))) or 1
    hold, train = order[:n_hold], order[n_hold:] or order[:n_hold]
    hold_feats, hold_y = [features[i] for i in hold], torch.cat([ys[i] for i in hold])
    head.train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    best = ValueFit(copy.deepcopy(head), 0, _mse(head, hold_feats, hold_y), math.nan)
    for epoch in range(1, epochs + 1):
        total = 0.0
        for i in train:
            loss = ((head(*features[i]) - ys[i].to(features[i][0].device)) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * sizes[i]
        train_mse = total / sum(sizes[i] for i in train)
        holdout = _mse(head, hold_feats, hold_y)
        best.history.append({"epoch": epoch, "train_mse": train_mse, "holdout_mse": holdout})
        if holdout < best.holdout_mse:
            best.head, best.best_epoch = copy.deepcopy(head), epoch
            best.holdout_mse, best.train_mse = holdout, train_mse
    best.head.eval().requires_grad_(False)
    return best
