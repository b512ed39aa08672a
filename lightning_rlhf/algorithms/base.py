"""What every algorithm shares: the policy built (and, under FSDP2, sharded) in
``configure_model``, the reference policy for those that need one, the optimiser and schedule,
the data-format and strategy checks, a NaN guard on losses and gradients that stops with a last-
good checkpoint, and logging of ``(loss, stats)``.

Each algorithm is a subclass whose typed ``__init__`` is its config schema (LightningCLI reads it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from transformers import PreTrainedTokenizerBase

from lightning_rlhf.checks import check_range
from lightning_rlhf.models import ModelConfig, build_reference, load_causal_lm, reference_model
from lightning_rlhf.strategies import (
    check_strategy,
    local_shard,
    release,
    reshard_after_step,
    shard_causal_lm,
)

Schedule = Literal["constant", "cosine", "linear", "onecycle"]


class NonFiniteLossError(RuntimeError):
    """Raised after ``max_nonfinite_steps`` consecutive non-finite losses or gradients (a
    checkpoint of the last good state is written first)."""


class RLHFModule(L.LightningModule):
    """Base class: a trainable policy plus optimiser settings.

    Args:
        policy: the model to train (hub name / local path, or a from-scratch config).
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up steps (``onecycle`` warms up over 10% of the run instead).
        schedule: learning-rate shape after warm-up.
        max_nonfinite_steps: consecutive non-finite losses or gradients (each step skipped,
            counted and logged) before the run stops, after saving ``last_good.ckpt``.
    """

    #: the data-module format this algorithm consumes ("prompt", "response", "pair", "ranked")
    data_format: str = "response"
    #: whether the policy trains with dropout on (off for on-policy RL, where the old and new
    #: log-probs of a rollout must come from the same deterministic network)
    dropout_in_training: bool = True
    #: attribute names of frozen models that are rebuilt, not checkpointed
    frozen_modules: tuple[str, ...] = ("reference",)

    def __init__(
        self,
        policy: ModelConfig,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        schedule: Schedule = "constant",
        max_nonfinite_steps: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_range(self, "lr", lr, gt=0)
        check_range(self, "weight_decay", weight_decay, ge=0)
        check_range(self, "betas[0]", betas[0], ge=0, lt=1)
        check_range(self, "betas[1]", betas[1], ge=0, lt=1)
        check_range(self, "warmup_steps", warmup_steps, ge=0)
        check_range(self, "max_nonfinite_steps", max_nonfinite_steps, ge=1)
        self.policy_config = policy
        self.policy: nn.Module | None = None
        self.reference: nn.Module | None = None  # pi_ref (None: not needed, or LoRA adapter-off)
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._nonfinite_in_a_row = 0
        self.skipped_steps = 0  # non-finite steps skipped over the whole run (checkpointed)
        self.tokens_seen = 0  # tokens (prompt + response) trained on, for throughput figures
        self.strict_loading = False  # frozen modules are dropped from checkpoints

    # --- set-up -------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The data module's tokenizer (or one attached with :meth:`attach_tokenizer`)."""
        if self._tokenizer is None:
            datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
            if datamodule is None:
                raise RuntimeError(
                    f"{type(self).__name__}: no tokenizer; fit with an RLHFDataModule"
                )
            self._tokenizer = datamodule.tokenizer
        return self._tokenizer

    def attach_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Use ``tokenizer`` without a trainer (scripts, tests)."""
        self._tokenizer = tokenizer

    def setup(self, stage: str) -> None:
        check_strategy(self, self.trainer.strategy)
        datamodule = getattr(self.trainer, "datamodule", None)
        fmt = getattr(datamodule, "format", None)
        if fmt is not None and fmt != self.data_format:
            raise ValueError(
                f"{type(self).__name__} needs data.format={self.data_format!r} but the data module "
                f"has format={fmt!r}: set `data.format: {self.data_format}` and matching data"
            )

    def configure_model(self) -> None:
        """Build the policy once (Lightning calls this under the strategy's init context); under
        FSDP2 (a device mesh is set) shard it, and the frozen causal LMs, layer by layer."""
        if self.policy is None:
            self.policy = self.build_policy()
            self.policy.train(self.dropout_in_training)  # from_pretrained returns eval mode
            self._check_context_length()
            self.build_frozen()
            if getattr(self, "_device_mesh", None) is not None:
                self.shard_models(self._device_mesh["data_parallel"])

    def shard_models(self, mesh: Any) -> None:
        """FSDP2: shard the policy and every frozen causal LM (``frozen_modules`` entries with
        decoder layers; CPU-offloaded when the strategy's ``offload_frozen`` is set); anything
        else (value heads, scorers) stays replicated."""
        shard_causal_lm(self.policy, mesh)
        for name in self.frozen_modules:
            frozen = getattr(self, name, None)
            if isinstance(frozen, nn.Module) and hasattr(frozen, "get_decoder"):
                shard_causal_lm(frozen, mesh, offload=self.offload_frozen)

    @property
    def offload_frozen(self) -> bool:
        """Whether the strategy keeps frozen models' shards in CPU memory (FSDP2 option)."""
        trainer = self._trainer
        return bool(getattr(trainer.strategy, "offload_frozen", False)) if trainer else False

    def _check_context_length(self) -> None:
        """Refuse data whose prompt + response limits exceed the model's context window."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        config = getattr(self.policy, "config", None)
        limit = getattr(config, "max_position_embeddings", None)
        if datamodule is None or not isinstance(limit, int):
            return
        needed = datamodule.max_prompt_length + datamodule.max_response_length
        if needed > limit:
            raise ValueError(
                f"data.max_prompt_length + data.max_response_length = {needed} exceeds the model's "
                f"context of {limit} tokens (max_position_embeddings): lower them"
            )

    def build_policy(self) -> nn.Module:
        return load_causal_lm(self.policy_config, self.tokenizer)

    def needs_reference(self) -> bool:
        """Whether the algorithm uses the reference policy pi_ref (built in ``build_frozen``)."""
        return False

    def build_frozen(self) -> None:
        """The reference policy when :meth:`needs_reference`; subclasses add critics and reward
        models here."""
        if self.needs_reference():
            self.reference = build_reference(self.policy, lora=self.policy_config.lora is not None)

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[nn.Module]:
        """pi_ref for the block: the frozen copy, or the LoRA policy with its adapter off."""
        try:
            with reference_model(self.policy, self.reference) as ref:
                yield ref
        finally:
            if self.reference is not None:
                release(self.reference)  # under FSDP2, no gathered copy outlives the pass

    # --- steps: a subclass implements compute_loss (online ones override the steps) ------------
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """``(loss, detached stats)`` of a batch, or None when the batch holds nothing to learn
        from (the step is skipped); the default steps below log the stats."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss")

    def compute_val_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """The validation ``(loss, stats)``; by default the training loss."""
        return self.compute_loss(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        out = self.compute_loss(batch)
        if out is None:
            return None
        loss, stats = out
        self.log_stats("train", stats, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.count_tokens(batch["attention_mask"])
        return self.guard_loss(loss)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.compute_val_loss(batch)
        if out is not None:
            size = batch["input_ids"].shape[0]
            self.log_stats("val", out[1], prog_bar=True, batch_size=size, sync_dist=True)

    # --- optimisation -------------------------------------------------------------------------
    def trainable_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups: every parameter that requires grad, in one group."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over :meth:`trainable_groups`, with the configured lr shape stepped per step."""
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.trainable_groups(), lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas)
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(hp.schedule, hp.warmup_steps, total)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # --- guards and logging -------------------------------------------------------------------
    def guard_loss(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Return ``loss`` if finite on every rank; else count and log it, and return None (step
        skipped). The count resets when an optimiser step goes through with finite gradients."""
        if self._all_finite(loss.detach()):
            return loss
        self._skip_nonfinite("loss")
        return None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradient NaN guard: non-finite gradients on any rank drop every gradient (the optimiser
        then leaves the weights and its state alone), counted and logged like a bad loss. Under
        FSDP2 it also installs, once, the reshard-after-step hook (``reshard_after_step``)."""
        reshard_after_step(optimizer, self)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        grads = [g for g in grads if g is not None]
        if not grads:  # the step was already skipped (non-finite loss)
            return
        local = torch.stack([local_shard(g).detach().float().square().sum() for g in grads]).sum()
        if self._all_finite(local):
            self._nonfinite_in_a_row = 0
            return
        optimizer.zero_grad(set_to_none=True)
        self._skip_nonfinite("gradient")

    def _all_finite(self, value: torch.Tensor) -> bool:
        """Whether ``value`` is finite on every rank (one all-reduce when distributed)."""
        bad = (~torch.isfinite(value)).any().float().reshape(())
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            bad = trainer.strategy.reduce(bad.to(self.device), reduce_op="sum")
        return float(bad) == 0.0

    def _skip_nonfinite(self, what: str) -> None:
        """Count a skipped step; after ``max_nonfinite_steps`` in a row save the (untouched, last
        good) state to ``last_good.ckpt`` and stop with :class:`NonFiniteLossError`."""
        self._nonfinite_in_a_row += 1
        self.skipped_steps += 1
        if self._trainer is not None:
            self.log("train/nonfinite_steps", float(self._nonfinite_in_a_row), on_step=True)
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True)
        if self._nonfinite_in_a_row < self.hparams.max_nonfinite_steps:
            return
        saved = self._save_last_good()
        raise NonFiniteLossError(
            f"{type(self).__name__}: {what} non-finite {self._nonfinite_in_a_row} steps in a row "
            f"(global step {self.global_step}); last good state saved to {saved}; check the "
            "data's rewards and the learning rate"
        )

    def _save_last_good(self) -> str:
        """Write ``<checkpoint dir>/last_good.ckpt`` (every rank takes part); its path or 'nowhere'
        without a trainer."""
        trainer = self._trainer
        if trainer is None:
            return "nowhere (no trainer)"
        callback = trainer.checkpoint_callback
        directory = getattr(callback, "dirpath", None) or Path(
            trainer.default_root_dir, "checkpoints"
        )
        path = Path(directory) / "last_good.ckpt"
        trainer.save_checkpoint(path)
        return str(path)

    def count_tokens(self, attention_mask: torch.Tensor) -> None:
        """Add the real tokens of a training batch to ``tokens_seen`` (this process only)."""
        self.tokens_seen += int(attention_mask.sum())

    def log_stats(self, prefix: str, stats: dict[str, torch.Tensor | float], **kwargs: Any) -> None:
        """Log every entry of a loss's stats dict under ``prefix/`` (nothing outside a Trainer:
        scripts and tests that drive a module by hand get no warning per entry)."""
        if self._trainer is None:
            return
        batch_size = kwargs.pop("batch_size", None)
        for key, value in stats.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self.log(f"{prefix}/{key}", value, batch_size=batch_size, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The module's state without its frozen modules (reference, value head, ...): they are
        rebuilt from their sources, so checkpoints, single-file or distributed, never hold them."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for key in [k for k in state if k[len(prefix) :].split(".", 1)[0] in self.frozen_modules]:
            del state[key]
        return state

    def on_train_start(self) -> None:
        """Warn about modules in eval mode that should train with dropout on (Lightning's own
        check, silenced in :mod:`lightning_rlhf.quiet`, would also count the frozen models)."""
        if not self.dropout_in_training:
            return  # on-policy RL runs every module in eval mode on purpose
        stray = sorted(
            {n.split(".", 1)[0] for n, m in self.named_modules() if n and not m.training}
            - set(self.frozen_modules)
        )
        if stray:
            rank_zero_warn(
                f"{type(self).__name__}: {', '.join(stray)} in eval mode at the start of training "
                "(dropout off where the algorithm trains with it on)"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        self.skipped_steps = checkpoint.get("skipped_steps", 0)


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """Multiplier of the peak lr at each optimiser step, for ``LambdaLR``."""
    if schedule == "onecycle":
        warmup_steps = max(1, int(0.1 * total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule in ("cosine", "onecycle"):
            return 0.5 * (1.0 + math.cos(math.pi * progress)) * (1 - 0.02) + 0.02
        if schedule == "linear":
            return 1.0 - progress * (1 - 0.02)
        return 1.0

    return factor
