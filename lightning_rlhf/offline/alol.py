"""A-LoL's preparation as plain functions: score the rows, sample the reference on held-out
prompts, fit V(x), take the reference log-probs, and cache the result.

:func:`prepare_alol` returns an :class:`OfflineTable` (one entry per training row: R, V(x), the
reference log-probs and the sampling priority). The data module samples rows by those priorities
(``RLHFDataModule.set_sample_weights``) and the ``ALoL`` module reads the rest per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_rlhf.data.collate import pad
from lightning_rlhf.losses.alol import VARIANTS, alol_priorities
from lightning_rlhf.models import response_logprobs
from lightning_rlhf.models.value_head import ValueHead, fit_value_head, prompt_hidden_states
from lightning_rlhf.offline.cache import load_cache, save_cache
from lightning_rlhf.rl.rewards import load_reward
from lightning_rlhf.rl.rollout import generate


@dataclass
class ValueHeadOptions:
    """How V(x) is built and fitted.

    Args:
        num_heads: attention heads; attn_dim: attention width (None = the LM's hidden size).
        max_value: the reward's upper bound (V = sigmoid(.) * max_value).
        epochs, lr: training of the head (AdamW); the best epoch by held-out MSE is kept.
        max_prompts: held-out prompts used (their hidden states, P x H each, are kept in memory).
        batch_size: prompts per generation / feature batch.
        do_sample, temperature: how the reference answers each prompt (one sample per prompt).
        holdout_fraction: share of those prompts that selects the epoch.
    """

    num_heads: int = 4
    attn_dim: int | None = None
    max_value: float = 1.0
    epochs: int = 20
    lr: float = 1e-3
    max_prompts: int = 2048
    batch_size: int = 64
    do_sample: bool = True
    temperature: float = 1.0
    holdout_fraction: float = 0.2


@dataclass
class OfflineTable:
    """Everything A-LoL needs per training row, in ``train_dataset`` order.

    Attributes:
        rewards: (N,) R; priorities: (N,) sampling weights (A+, R+ or 1).
        values: (N,) V(x), or None for variants without an advantage.
        ref_logprobs: (N, T_max) log pi_ref of each row's response tokens (0-padded), or None
            (not needed, or taken live).
        value_head: the fitted head (frozen, eval mode), or None (not fitted in this process).
        cache_hit: whether values / reference log-probs came from the cache.
        stats: counts for the log (rows, positive rows, advantage mean, ...).
    """

    rewards: torch.Tensor
    priorities: torch.Tensor
    values: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    value_head: ValueHead | None = None
    cache_hit: bool = False
    stats: dict[str, float] = field(default_factory=dict)

    def batch_ref_logprobs(self, index: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) cached log pi_ref aligned with a batch's ``input_ids`` (rows ``index``)."""
        cached = self.ref_logprobs[index.cpu()]  # (B, T_max)
        lengths = response_mask.sum(1).cpu()
        tokens = torch.arange(cached.shape[1])[None, :] < lengths[:, None]
        out = torch.zeros(response_mask.shape, device=response_mask.device)
        out[response_mask.bool()] = cached[tokens].to(response_mask.device)
        return out


@dataclass
class AlolSetup:
    """What preparation reads: the run's data, reference and options.

    Attributes:
        variant: the A-LoL variant (decides what is computed).
        datamodule: a set-up ``RLHFDataModule`` (train / val datasets, collator, tokenizer).
        reference: a context manager factory yielding pi_ref.
        reward: scorer spec (``module:function`` or a reward-model directory), or None.
        options: :class:`ValueHeadOptions`.
        precompute_ref: cache the reference log-probs (else they are taken live per batch).
        cache_path: the cache file; cache_key: what the cache depends on (see ``cache_key``).
        device: where forward passes run.
    """

    variant: str
    datamodule: Any
    reference: Callable[[], contextlib.AbstractContextManager[nn.Module]]
    reward: str | None
    options: ValueHeadOptions
    precompute_ref: bool
    cache_path: Path
    cache_key: dict[str, str | None]
    device: torch.device
    _scorer: Any = field(default=None, init=False, repr=False)

    def scorer(self) -> Any:
        """The reward function, loaded once."""
        if self._scorer is None:
            self._scorer = load_reward(self.reward, device=self.device)
        return self._scorer


def prepare_alol(
    setup: AlolSetup, *, is_writer: bool = True, barrier: Callable[[], None] = lambda: None
) -> OfflineTable:
    """R, V(x), reference log-probs and priorities of every training row (cached at
    ``setup.cache_path``; only ``is_writer`` writes it, then every rank passes ``barrier``)."""
    spec = VARIANTS[setup.variant]
    rewards = row_rewards(setup)
    cache = load_cache(setup.cache_path, rewards, setup.cache_key)
    hit = cache is not None
    cache = cache or {"rewards": rewards, "values": None, "ref": None, "head": None,
                      "key": setup.cache_key}  # fmt: skip
    changed, head = False, None
    if spec.needs_values and cache["values"] is None:
        head, fitted = estimate_values(setup)
        cache.update(fitted)
        changed = True
    needs_cached_ref = spec.needs_ref and setup.precompute_ref
    if needs_cached_ref and cache["ref"] is None:
        cache["ref"] = precompute_ref_logprobs(setup)
        changed = True
    if changed:
        if is_writer:
            save_cache(setup.cache_path, cache)
        barrier()
    values = cache["values"] if spec.needs_values else None
    table = OfflineTable(
        rewards=rewards,
        priorities=alol_priorities(setup.variant, rewards, values),
        values=values,
        ref_logprobs=cache["ref"] if needs_cached_ref else None,
        value_head=head,
        cache_hit=hit,
    )
    table.stats = offline_stats(table)
    return table


def row_rewards(setup: AlolSetup) -> torch.Tensor:
    """(N,) R of every training row: the data's ``reward`` column or, when the data has none
    (e.g. HH transcripts), the configured scorer applied to the rows' (prompt, response)."""
    ds = setup.datamodule.train_dataset
    if "reward" in ds.column_names or setup.reward is None:
        return checked_rewards(ds)
    rank_zero_info(f"A-LoL: the data has no rewards; scoring {len(ds)} rows with {setup.reward}")
    size, scorer = setup.options.batch_size, setup.scorer()
    scores = [
        scorer(ds[i : i + size]["prompt"], ds[i : i + size]["response"]).float().cpu()
        for i in range(0, len(ds), size)
    ]
    return torch.cat(scores)


def checked_rewards(ds: datasets.Dataset) -> torch.Tensor:
    """(N,) rewards of the training rows; one-line errors for a missing column or bad value."""
    if "reward" not in ds.column_names:
        raise ValueError(
            f"ALoL needs a reward per training row, but the data has columns {ds.column_names} "
            "and model.reward is null; map one with data.columns: {reward: <column>} or set "
            "model.reward to a scorer"
        )
    rewards = torch.tensor(ds["reward"], dtype=torch.float32)
    bad = ~torch.isfinite(rewards)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"ALoL: training row {i} has reward {float(rewards[i])} (NaN/inf)")
    return rewards


def cache_key(policy: Any, dm: Any, value_head: Any, reward: str | None) -> dict[str, str | None]:
    """What the cached values and reference log-probs depend on: the reference model (the
    policy's ``ModelConfig``), the tokenised training and validation rows (``datasets``
    fingerprints, which change with the data, the tokenizer and the length limits), the
    value-head options and the scorer."""
    val = getattr(dm.val_dataset, "_fingerprint", None)
    return {
        "reference": repr((policy.name_or_path, policy.config, policy.lora, policy.dtype)),
        "train_rows": dm.train_dataset._fingerprint,
        "val_rows": val,
        "value_head": repr(value_head),
        "reward": repr(reward),
    }


def estimate_values(setup: AlolSetup) -> tuple[ValueHead, dict]:
    """Fit V on held-out prompts against the reference's own rewards; V of every train row.

    Returns:
        the fitted head and the cache entries ``values`` (N,), ``head`` (its state) and
        ``value_fit`` (the per-epoch curve).
    """
    dm, opts = setup.datamodule, setup.options
    source = dm.val_dataset if dm.val_dataset is not None else dm.train_dataset
    if dm.val_dataset is None:
        rank_zero_info("A-LoL: no validation set; fitting V on training prompts instead")
    source = source.select(range(min(len(source), opts.max_prompts)))
    with setup.reference() as ref:
        feats, targets = _value_targets(setup, ref, source)
        head = ValueHead(feats[0][0].shape[-1], opts.num_heads, opts.attn_dim, opts.max_value)
        fit = fit_value_head(
            head.to(setup.device), feats, targets,
            epochs=opts.epochs, lr=opts.lr, holdout_fraction=opts.holdout_fraction,
        )  # fmt: skip
        values = torch.cat(
            [
                fit.head(prompt_hidden_states(ref, ids, mask), mask).cpu()
                for ids, mask, _ in _prompt_batches(setup, dm.train_dataset)
            ]
        )
    rank_zero_info(
        f"A-LoL value head: best epoch {fit.best_epoch}/{opts.epochs}, held-out MSE "
        f"{fit.holdout_mse:.4f} (target variance {float(targets.var()):.4f})"
    )
    return fit.head, {"values": values, "head": fit.head.state_dict(), "value_fit": fit.history}


def _value_targets(
    setup: AlolSetup, ref: nn.Module, source: datasets.Dataset
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Prompt features of ``source`` and V's targets: rewards of the reference's responses
    (or the rows' own rewards when no scorer is configured)."""
    opts, dm, feats, targets = setup.options, setup.datamodule, [], []
    scorer = setup.scorer() if setup.reward else None
    if scorer is None:
        rank_zero_info("A-LoL: no reward scorer; V regresses the held-out rows' own rewards")
    for ids, mask, rows in _prompt_batches(setup, source):
        feats.append((prompt_hidden_states(ref, ids, mask), mask))
        if scorer is None:
            targets.append(torch.tensor(rows["reward"], dtype=torch.float32))
            continue
        rollout = generate(
            ref, dm.tokenizer, ids, mask, max_new_tokens=dm.max_response_length,
            do_sample=opts.do_sample, temperature=opts.temperature,
        )  # fmt: skip
        targets.append(scorer(rows["prompt"], rollout.responses).float().cpu())
    return feats, torch.cat(targets)


def _prompt_batches(
    setup: AlolSetup, ds: datasets.Dataset
) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    """Left-padded (b, P) prompt ids and masks of ``ds`` in order, with the raw rows."""
    pad_id, size = setup.datamodule.tokenizer.pad_token_id, setup.options.batch_size
    for start in range(0, len(ds), size):
        rows = ds[start : start + size]
        ids, mask = pad(rows["prompt_ids"], pad_id, left=True)
        yield ids.to(setup.device), mask.to(setup.device), rows


@torch.no_grad()
def precompute_ref_logprobs(setup: AlolSetup) -> torch.Tensor:
    """(N, T_max) log pi_ref of every training row's response tokens (0-padded)."""
    dm, device = setup.datamodule, setup.device
    ds, collate, size = dm.train_dataset, dm.collate_fn, dm.eval_batch_size
    t_max = max(len(r) for r in ds["response_ids"])
    out = torch.zeros(len(ds), t_max)
    with setup.reference() as ref:
        for start in range(0, len(ds), size):
            batch = collate([ds[i] for i in range(start, min(len(ds), start + size))])
            rm = batch["response_mask"].to(device)
            lp = response_logprobs(
                ref, batch["input_ids"].to(device), batch["attention_mask"].to(device), rm
            )
            lengths = rm.sum(1).cpu()
            tokens = torch.arange(t_max)[None, :] < lengths[:, None]  # (b, T_max)
            out[start : start + len(lengths)][tokens] = lp[rm.bool()].float().cpu()
    return out


def offline_stats(table: OfflineTable) -> dict[str, float]:
    """Row counts and advantage summary of a prepared table (logged once)."""
    n, positive = table.rewards.numel(), int((table.priorities > 0).sum())
    stats = {"rows": float(n), "positive_rows": float(positive)}
    if table.values is not None:
        adv = table.rewards - table.values
        stats.update(
            advantage_mean=float(adv.mean()),
            value_mean=float(table.values.mean()),
            adv_positive=float((adv > 0).sum()),
            adv_nonpositive=float((adv <= 0).sum()),
        )
    return stats
