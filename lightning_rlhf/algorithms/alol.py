"""A-LoL: advantage-based offline RL on scored responses (Baheti et al., "Leftover Lunch:
Advantage-based Offline Reinforcement Learning for Language Models", ICLR 2024).

Before training, ``on_fit_start`` runs the preparation of :mod:`lightning_rlhf.offline.alol`
(score the rows, fit V(x) on held-out prompts against the reference's own samples, take the
reference log-probs; cached in ``<default_root_dir>/alol_cache.pt`` and reused on resume) and
hands the rows' priorities to the data module, which then draws training rows by them. This
module keeps the loss and its wiring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_rlhf.algorithms.base import RLHFModule
from lightning_rlhf.checks import check_range
from lightning_rlhf.losses.alol import VARIANTS, alol_loss
from lightning_rlhf.losses.supervised import sft_loss
from lightning_rlhf.models import ModelConfig, response_logprobs
from lightning_rlhf.offline.alol import (
    AlolSetup,
    OfflineTable,
    ValueHeadOptions,
    cache_key,
    prepare_alol,
)

Variant = Literal[
    "nll", "wbc", "r_gold", "r_lol", "a_lol", "a_lol_ref_free", "a_lol_seq", "a_lol_kl"
]


class ALoL(RLHFModule):
    """The A-LoL family on (prompt, response, reward) rows (data format "response").

    Args:
        policy: the model to train (usually the SFT export); the reference is a frozen copy (or,
            with LoRA, the same model with the adapter disabled).
        variant: nll, wbc, r_gold, r_lol, a_lol, a_lol_ref_free, a_lol_seq, a_lol_kl
            (see ``lightning_rlhf/losses/README.md``, A-LoL).
        reward: ``module:function`` scorer or a reward-model export directory that scores the
            reference's responses for V's targets (and the training rows when the data has no
            ``reward`` column); null regresses V on the held-out rows' own rewards instead.
        clip_eps, kl_beta, gold_floor: see :func:`lightning_rlhf.losses.alol.alol_loss`.
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

    def __init__(
        self,
        policy: ModelConfig,
        reward: str | None,
        variant: Variant = "a_lol",
        clip_eps: float = 0.9,
        kl_beta: float = 0.0,
        gold_floor: float = 0.1,
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
        self.variant = variant
        self.value_options = value_head or ValueHeadOptions()
        self.value_head: torch.nn.Module | None = None
        self.table: OfflineTable | None = None

    def needs_reference(self) -> bool:
        """Every variant: V(x) reads the reference's hidden states, ratios its log-probs."""
        return True

    def on_fit_start(self) -> None:
        """Prepare the offline table (or load it from the cache) and, with priority sampling,
        let the data module draw training rows by it."""
        dm, trainer = self.trainer.datamodule, self.trainer
        hp = self.hparams
        setup = AlolSetup(
            variant=self.variant,
            datamodule=dm,
            reference=self.reference_model,
            reward=hp.reward,
            options=self.value_options,
            precompute_ref=hp.ref_logprobs == "precompute",
            cache_path=Path(hp.cache_path or Path(trainer.default_root_dir, "alol_cache.pt")),
            cache_key=cache_key(self.policy_config, dm, hp.value_head, hp.reward),
            device=self.device,
        )
        barrier = lambda: trainer.strategy.barrier("alol_cache")
        self.table = prepare_alol(setup, is_writer=trainer.is_global_zero, barrier=barrier)
        self.value_head = self.table.value_head
        if hp.priority_sampling:
            dm.set_sample_weights(self.table.priorities)
        self._log_table()

    def _log_table(self) -> None:
        stats, table = self.table.stats, self.table
        rank_zero_info(
            f"A-LoL ({self.variant}): {int(stats['positive_rows'])} of {int(stats['rows'])} rows "
            "have a positive priority"
            + (
                f"; A > 0: {int(stats['adv_positive'])}, A <= 0: {int(stats['adv_nonpositive'])}, "
                f"mean V {stats['value_mean']:.3f}"
                if table.values is not None
                else ""
            )
            + (" (loaded from cache)" if table.cache_hit else "")
        )

    def on_train_start(self) -> None:
        for logger in self.loggers:
            logger.log_metrics({f"offline/{k}": v for k, v in self.table.stats.items()}, 0)

    def batch_ref_logprobs(self, batch: dict) -> torch.Tensor | None:
        """(B, L) log pi_ref aligned with ``input_ids``: from the table or a live forward."""
        if not VARIANTS[self.variant].needs_ref:
            return None
        rm = batch["response_mask"]
        if self.table.ref_logprobs is not None:
            return self.table.batch_ref_logprobs(batch["index"], rm)
        with torch.no_grad(), self.reference_model() as ref:
            return response_logprobs(ref, batch["input_ids"], batch["attention_mask"], rm)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        rm, index = batch["response_mask"], batch["index"].cpu()
        logprobs = response_logprobs(self.policy, batch["input_ids"], batch["attention_mask"], rm)
        values = self.table.values
        return alol_loss(
            logprobs,
            self.batch_ref_logprobs(batch),
            rm,
            self.table.rewards[index].to(logprobs.device),
            None if values is None else values[index].to(logprobs.device),
            variant=self.variant,
            clip_eps=self.hparams.clip_eps,
            kl_beta=self.hparams.kl_beta,
            gold_floor=self.hparams.gold_floor,
        )

    def compute_val_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Validation: the NLL of the held-out responses (the rows have no advantages)."""
        rm = batch["response_mask"]
        logprobs = response_logprobs(self.policy, batch["input_ids"], batch["attention_mask"], rm)
        return sft_loss(logprobs, rm)
