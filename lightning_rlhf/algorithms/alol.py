"""A-LoL: advantage-based offline RL on scored responses (Baheti et al., "Leftover Lunch:
Advantage-based Offline Reinforcement Learning for Language Models", ICLR 2024).

Before training (once, cached in ``<default_root_dir>/alol_cache.pt`` and reused on resume): fit
the value head V(x) on held-out prompts, compute A = R - V for every training row, optionally the
reference log-probs of every row; then train on rows drawn by :class:`PrioritySampler`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader

from lightning_rlhf.algorithms.base import RLHFModule
from lightning_rlhf.checks import check_range
from lightning_rlhf.data.collate import pad
from lightning_rlhf.data.priority import PrioritySampler
from lightning_rlhf.demo import DemoStage
from lightning_rlhf.losses.alol import alol_loss
from lightning_rlhf.losses.supervised import sft_loss
from lightning_rlhf.models import ModelConfig, frozen_copy, response_logprobs
from lightning_rlhf.models.value_head import ValueHead, fit_value_head, prompt_hidden_states
from lightning_rlhf.rl.rewards import load_reward
from lightning_rlhf.rl.rollout import generate

Variant = Literal[
    "nll", "wbc", "r_gold", "r_lol", "a_lol", "a_lol_ref_free", "a_lol_seq", "a_lol_kl"
]
NEEDS_REF = frozenset({"r_lol", "a_lol", "a_lol_seq", "a_lol_kl"})
NEEDS_VALUE = frozenset({"a_lol", "a_lol_ref_free", "a_lol_seq", "a_lol_kl"})
REWARD_PRIORITY = frozenset({"wbc", "r_gold", "r_lol"})


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


class FrozenReference:
    """Mixin for modules with a reference policy pi_ref (``self.reference``; LoRA: the adapter
    disabled on the policy itself, so no second copy). List "reference" in ``frozen_modules``."""

    def build_frozen(self) -> None:
        """A frozen copy of the initial policy, unless LoRA (then the adapter is disabled)."""
        self.reference = None if self.policy_config.lora is not None else frozen_copy(self.policy)

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[nn.Module]:
        """The reference policy pi_ref: the frozen copy, or the LoRA base with adapters off."""
        if self.reference is not None:
            yield self.reference
            return
        was_training = self.policy.training
        self.policy.eval()
        try:
            with self.policy.disable_adapter():
                yield self.policy
        finally:
            self.policy.train(was_training)


class ALoL(FrozenReference, RLHFModule):
    """The A-LoL family on (prompt, response, reward) rows (data format "response").

    Args:
        policy: the model to train (usually the SFT export); the reference is a frozen copy (or,
            with LoRA, the same model with the adapter disabled).
        variant: nll, wbc, r_gold, r_lol, a_lol, a_lol_ref_free, a_lol_seq, a_lol_kl
            (ALGORITHMS.md 2).
        clip_eps, kl_beta, gold_floor: see :func:`lightning_rlhf.losses.alol.alol_loss`.
        reward: ``module:function`` scorer or a reward-model export directory that scores the
            reference's responses for V's targets (and the training rows when the data has no
            ``reward`` column); None regresses V on the held-out rows' own rewards instead.
        value_head: :class:`ValueHeadOptions`.
        ref_logprobs: "precompute" (once over the data, cached) or "live" (a reference forward
            per step).
        priority_sampling: draw rows by priority (A+, R or uniform); False keeps the data
            module's shuffled epochs (the weights then only enter the loss).
        cache_path: where the value head, advantages and reference log-probs are cached; default
            ``<trainer.default_root_dir>/alol_cache.pt``.
        Other arguments: those of :class:`RLHFModule` (released settings: lr 2e-4 constant).
    """

    data_format = "response"
    frozen_modules = ("reference", "value_head")
    demo_stages = tuple(
        DemoStage(
            name,
            "alol/arithmetic.yaml",
            order=50,
            overrides=(
                "--model.init_args.policy.name_or_path",
                "{run}/sft/export",
                "--model.init_args.variant",
                name,
                # a_lol_kl with beta 0 would be a_lol_ref_free; 0.1 as in ALGORITHMS.md's check
                *(("--model.init_args.kl_beta", "0.1") if name == "a_lol_kl" else ()),
            ),
            quick=(
                "--trainer.max_steps",
                "25",
                "--data.num_train",
                "1000",
                "--data.num_val",
                "128",
            ),
        )
        for name in ("a_lol", "a_lol_seq", "a_lol_ref_free", "a_lol_kl", "r_lol", "wbc", "r_gold")
        + ("nll",)
    )

    def __init__(
        self,
        policy: ModelConfig,
        variant: Variant = "a_lol",
        clip_eps: float = 0.9,
        kl_beta: float = 0.0,
        gold_floor: float = 0.1,
        reward: str | None = "lightning_rlhf.data.tasks.arithmetic:reward",
        value_head: ValueHeadOptions | None = None,
        ref_logprobs: Literal["precompute", "live"] = "precompute",
        priority_sampling: bool = True,
        cache_path: str | None = None,
        lr: float = 2e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, lr=lr, **kwargs)
        self.save_hyperparameters()
        check_range(self, "clip_eps", clip_eps, gt=0, lt=1)
        check_range(self, "kl_beta", kl_beta, ge=0)
        check_range(self, "gold_floor", gold_floor, ge=0, le=1)
        self.variant, self.reward_spec = variant, reward
        self.value_options = value_head or ValueHeadOptions()
        self.reference: nn.Module | None = None
        self.value_head: ValueHead | None = None
        self.values: torch.Tensor | None = None  # (N,) V(x_i) of every training row
        self.ref_cache: torch.Tensor | None = None  # (N, T_max) log pi_ref of response tokens
        self.priorities: torch.Tensor | None = None  # (N,)
        self.rewards: torch.Tensor | None = None  # (N,) R of every training row
        self.cache_hit = False
        self.offline_stats: dict[str, float] = {}
        self._sampler: PrioritySampler | None = None
        self._sampler_state: dict | None = None

    # --- data: priority sampling installed on the data module --------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and datamodule is not None and self.hparams.priority_sampling:
            # Lightning asks the data module for the train loader (after configure_model and
            # checkpoint restore): answer with the priority-sampled one, built lazily
            datamodule.train_dataloader = self.priority_dataloader

    def priority_dataloader(self) -> DataLoader:
        """Training batches drawn by :class:`PrioritySampler` (prepares the offline data first)."""
        dm = self.trainer.datamodule
        self.prepare_offline()
        self._sampler = PrioritySampler(
            self.priorities,
            num_replicas=self.trainer.world_size,
            rank=self.trainer.global_rank,
            seed=dm.seed,
        )
        if self._sampler_state is not None:
            self._sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None
        return DataLoader(
            dm.train_dataset,
            batch_size=dm.batch_size,
            sampler=self._sampler,
            collate_fn=dm.collate_fn,
            num_workers=dm.num_workers,
            persistent_workers=dm.num_workers > 0,
        )

    def cache_file(self) -> Path:
        path = self.hparams.cache_path
        return Path(path) if path else Path(self.trainer.default_root_dir) / "alol_cache.pt"

    def prepare_offline(self) -> None:
        """V(x_i), reference log-probs and priorities of every training row (cached)."""
        if self.priorities is not None:
            return
        dm = self.trainer.datamodule
        rewards = self.row_rewards(dm.train_dataset)
        key = self.cache_key(dm)
        cache = _load_cache(self.cache_file(), rewards, key)
        self.cache_hit = cache is not None
        cache = cache or {"rewards": rewards, "values": None, "ref": None, "head": None, "key": key}
        changed = False
        if self.variant in NEEDS_VALUE and cache["values"] is None:
            cache.update(self.estimate_values(dm))
            changed = True
        needs_cached_ref = self.variant in NEEDS_REF and self.hparams.ref_logprobs == "precompute"
        if needs_cached_ref and cache["ref"] is None:
            cache["ref"] = self.precompute_ref_logprobs(dm)
            changed = True
        if changed:
            self._save_cache(cache)
        self.values, self.ref_cache = cache["values"], cache["ref"] if needs_cached_ref else None
        self.priorities = self.row_priorities(rewards, self.values)
        self._log_offline(rewards)

    def cache_key(self, dm: Any) -> dict[str, str | None]:
        """What the cached values and reference log-probs depend on: the reference model, the
        tokenised training and validation rows (``datasets`` fingerprints, which change with the
        data, the tokenizer and the length limits), the value-head options and the scorer."""
        policy = self.policy_config
        val = getattr(dm.val_dataset, "_fingerprint", None)
        return {
            "reference": repr((policy.name_or_path, policy.config, policy.lora, policy.dtype)),
            "train_rows": dm.train_dataset._fingerprint,
            "val_rows": val,
            "value_head": repr(self.hparams.value_head),
            "reward": repr(self.reward_spec),
        }

    def row_rewards(self, ds: datasets.Dataset) -> torch.Tensor:
        """(N,) R of every training row: the data's ``reward`` column or, when the data has none
        (e.g. HH transcripts), the configured scorer applied to the rows' (prompt, response)."""
        if "reward" in ds.column_names or self.reward_spec is None:
            self.rewards = _checked_rewards(ds)
            return self.rewards
        rank_zero_info(
            f"A-LoL: the data has no rewards; scoring {len(ds)} rows with {self.reward_spec}"
        )
        scorer = load_reward(self.reward_spec, device=self.device)
        size = self.value_options.batch_size
        scores = [
            scorer(ds[i : i + size]["prompt"], ds[i : i + size]["response"]).float().cpu()
            for i in range(0, len(ds), size)
        ]
        self.rewards = torch.cat(scores)
        return self.rewards

    def row_priorities(self, rewards: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        """(N,) sampling weights: A+ (A-LoL variants), max(R, 0) (wbc, r_gold, r_lol), 1 (nll)."""
        if self.variant in NEEDS_VALUE:
            return (rewards - values).clamp(min=0)
        if self.variant in REWARD_PRIORITY:
            return rewards.clamp(min=0)
        return torch.ones_like(rewards)

    def _save_cache(self, cache: dict) -> None:
        if self.trainer.is_global_zero:
            path = self.cache_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(cache, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
        self.trainer.strategy.barrier("alol_cache")

    def _log_offline(self, rewards: torch.Tensor) -> None:
        n, positive = rewards.numel(), int((self.priorities > 0).sum())
        stats = {"rows": float(n), "positive_rows": float(positive)}
        if self.values is not None:
            adv = rewards - self.values
            stats.update(
                advantage_mean=float(adv.mean()),
                value_mean=float(self.values.mean()),
                adv_positive=float((adv > 0).sum()),
                adv_nonpositive=float((adv <= 0).sum()),
            )
        self.offline_stats = stats
        rank_zero_info(
            f"A-LoL ({self.variant}): {positive} of {n} rows have a positive priority"
            + (
                f"; A > 0: {int(stats['adv_positive'])}, A <= 0: {int(stats['adv_nonpositive'])}, "
                f"mean V {stats['value_mean']:.3f}"
                if self.values is not None
                else ""
            )
            + (" (loaded from cache)" if self.cache_hit else "")
        )

    # --- the value estimate -------------------------------------------------------------------
    def estimate_values(self, dm: Any) -> dict:
        """Fit V on held-out prompts against the reference's own rewards; V of every train row."""
        opts = self.value_options
        source = dm.val_dataset if dm.val_dataset is not None else dm.train_dataset
        if dm.val_dataset is None:
            rank_zero_info("A-LoL: no validation set; fitting V on training prompts instead")
        source = source.select(range(min(len(source), opts.max_prompts)))
        with self.reference_model() as ref:
            feats, targets = self._value_targets(ref, source, dm)
            hidden = feats[0][0].shape[-1]
            head = ValueHead(hidden, opts.num_heads, opts.attn_dim, opts.max_value)
            fit = fit_value_head(
                head.to(self.device),
                feats,
                targets,
                epochs=opts.epochs,
                lr=opts.lr,
                holdout_fraction=opts.holdout_fraction,
            )
            self.value_head = fit.head
            values = torch.cat(
                [
                    fit.head(prompt_hidden_states(ref, ids, mask), mask).cpu()
                    for ids, mask, _ in self._prompt_batches(dm.train_dataset, opts.batch_size)
                ]
            )
        rank_zero_info(
            f"A-LoL value head: best epoch {fit.best_epoch}/{opts.epochs}, held-out MSE "
            f"{fit.holdout_mse:.4f} (target variance {float(targets.var()):.4f})"
        )
        return {"values": values, "head": fit.head.state_dict(), "value_fit": fit.history}

    def _value_targets(
        self, ref: nn.Module, source: datasets.Dataset, dm: Any
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Prompt features of ``source`` and V's targets: rewards of the reference's responses
        (or the rows' own rewards when no scorer is configured)."""
        opts, feats, targets = self.value_options, [], []
        scorer = load_reward(self.reward_spec, device=self.device) if self.reward_spec else None
        if scorer is None:
            rank_zero_info("A-LoL: no reward scorer; V regresses the held-out rows' own rewards")
        for ids, mask, rows in self._prompt_batches(source, opts.batch_size):
            feats.append((prompt_hidden_states(ref, ids, mask), mask))
            if scorer is None:
                targets.append(torch.tensor(rows["reward"], dtype=torch.float32))
                continue
            rollout = generate(
                ref,
                self.tokenizer,
                ids,
                mask,
                max_new_tokens=dm.max_response_length,
                do_sample=opts.do_sample,
                temperature=opts.temperature,
            )
            targets.append(scorer(rows["prompt"], rollout.responses).float().cpu())
        return feats, torch.cat(targets)

    def _prompt_batches(
        self, ds: datasets.Dataset, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        """Left-padded (b, P) prompt ids and masks of ``ds`` in order, with the raw rows."""
        for start in range(0, len(ds), batch_size):
            rows = ds[start : start + batch_size]
            ids, mask = pad(rows["prompt_ids"], self.tokenizer.pad_token_id, left=True)
            yield ids.to(self.device), mask.to(self.device), rows

    @torch.no_grad()
    def precompute_ref_logprobs(self, dm: Any) -> torch.Tensor:
        """(N, T_max) log pi_ref of every training row's response tokens (0-padded)."""
        ds, collate = dm.train_dataset, dm.collate_fn
        t_max = max(len(r) for r in ds["response_ids"])
        out = torch.zeros(len(ds), t_max)
        with self.reference_model() as ref:
            for start in range(0, len(ds), dm.eval_batch_size):
                batch = collate(
                    [ds[i] for i in range(start, min(len(ds), start + dm.eval_batch_size))]
                )
                rm = batch["response_mask"].to(self.device)
                lp = response_logprobs(
                    ref,
                    batch["input_ids"].to(self.device),
                    batch["attention_mask"].to(self.device),
                    rm,
                )
                lengths = rm.sum(1).cpu()
                tokens = torch.arange(t_max)[None, :] < lengths[:, None]  # (b, T_max)
                rows = out[start : start + len(lengths)]
                rows[tokens] = lp[rm.bool()].float().cpu()
        return out

    # --- training -----------------------------------------------------------------------------
    def batch_ref_logprobs(self, batch: dict) -> torch.Tensor | None:
        """(B, L) log pi_ref aligned with ``input_ids``: from the cache or a live forward."""
        if self.variant not in NEEDS_REF:
            return None
        rm = batch["response_mask"]
        if self.ref_cache is None:
            with torch.no_grad(), self.reference_model() as ref:
                return response_logprobs(ref, batch["input_ids"], batch["attention_mask"], rm)
        cached = self.ref_cache[batch["index"].cpu()]  # (B, T_max)
        tokens = torch.arange(cached.shape[1])[None, :] < rm.sum(1).cpu()[:, None]
        out = torch.zeros(rm.shape, device=rm.device)
        out[rm.bool()] = cached[tokens].to(rm.device)
        return out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if self.priorities is None:  # priority sampling off: prepare on first use
            self.prepare_offline()
        rm = batch["response_mask"]
        logprobs = response_logprobs(self.policy, batch["input_ids"], batch["attention_mask"], rm)
        values = None
        if self.values is not None and self.variant in NEEDS_VALUE:
            values = self.values[batch["index"].cpu()].to(logprobs.device)
        loss, stats = alol_loss(
            logprobs,
            self.batch_ref_logprobs(batch),
            rm,
            self.rewards[batch["index"].cpu()].to(logprobs.device),
            values,
            variant=self.variant,
            clip_eps=self.hparams.clip_eps,
            kl_beta=self.hparams.kl_beta,
            gold_floor=self.hparams.gold_floor,
        )
        self.log_stats("train", stats, prog_bar=True, batch_size=rm.shape[0])
        self.count_tokens(batch["attention_mask"])
        return self.guard_loss(loss)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logprobs = response_logprobs(
            self.policy, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        )
        _, stats = sft_loss(logprobs, batch["response_mask"])
        self.log_stats(
            "val", stats, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True
        )

    def on_train_start(self) -> None:
        for logger in self.loggers:
            logger.log_metrics({f"offline/{k}": v for k, v in self.offline_stats.items()}, 0)

    # --- checkpoints: the sampler's place in its stream ---------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._sampler is not None:
            done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
            consumed = done * self.trainer.datamodule.batch_size
            checkpoint["priority_sampler"] = self._sampler.state_dict(consumed=consumed)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._sampler_state = checkpoint.get("priority_sampler")


def _checked_rewards(ds: datasets.Dataset) -> torch.Tensor:
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


def _load_cache(path: Path, rewards: torch.Tensor, key: dict) -> dict | None:
    """The cache at ``path`` if it was made for these rows, rewards, reference and options (see
    ``ALoL.cache_key``), else None (and it is recomputed)."""
    if not path.exists():
        return None
    cache = torch.load(path, map_location="cpu", weights_only=False)
    old = cache["rewards"]
    same_rewards = old.shape == rewards.shape and torch.equal(old, rewards)
    if not same_rewards or cache.get("key") != key:
        changed = [k for k in key if cache.get("key", {}).get(k) != key[k]] or ["rewards"]
        rank_zero_info(f"A-LoL: {path} was made for another {', '.join(changed)}; recomputing it")
        return None
    return cache
