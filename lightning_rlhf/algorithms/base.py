"""What every algorithm shares: the policy built in ``configure_model``, the optimiser and
schedule, the data-format check, a NaN guard, and logging of ``(loss, stats)`` pairs.

Each algorithm is a subclass whose typed ``__init__`` is its config schema (LightningCLI reads it).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from lightning_rlhf.models import ModelConfig, load_causal_lm

Schedule = Literal["constant", "cosine", "linear", "onecycle"]


class NonFiniteLossError(RuntimeError):
    """Raised after ``max_nonfinite_steps`` consecutive non-finite losses."""


class RLHFModule(L.LightningModule):
    """Base class: a trainable policy plus optimiser settings.

    Args:
        policy: the model to train (hub name / local path, or a from-scratch config).
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up steps (``onecycle`` warms up over 10% of the run instead).
        schedule: learning-rate shape after warm-up.
        max_nonfinite_steps: consecutive non-finite losses (skipped, counted) before the run stops.
    """

    #: the data-module format this algorithm consumes ("prompt", "response", "pair", "ranked")
    data_format: str = "response"
    #: attribute names of frozen models that are rebuilt, not checkpointed
    frozen_modules: tuple[str, ...] = ()

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
        self.policy_config = policy
        self.policy: nn.Module | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._nonfinite_in_a_row = 0
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
        datamodule = getattr(self.trainer, "datamodule", None)
        fmt = getattr(datamodule, "format", None)
        if fmt is not None and fmt != self.data_format:
            raise ValueError(
                f"{type(self).__name__} needs data.format={self.data_format!r} but the data module "
                f"has format={fmt!r}: set `data.format: {self.data_format}` and matching data"
            )

    def configure_model(self) -> None:
        """Build the policy once (Lightning calls this under the strategy's init context)."""
        if self.policy is None:
            self.policy = self.build_policy()
            self._check_context_length()
            self.build_frozen()

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

    def build_frozen(self) -> None:
        """Subclasses build reference / reward models here."""

    # --- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas)
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
        """Return ``loss`` if finite; else count and log it, and return None (step skipped)."""
        if torch.isfinite(loss).all():
            self._nonfinite_in_a_row = 0
            return loss
        self._nonfinite_in_a_row += 1
        self.log("train/nonfinite_steps", float(self._nonfinite_in_a_row), on_step=True)
        if self._nonfinite_in_a_row >= self.hparams.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{type(self).__name__}: loss non-finite {self._nonfinite_in_a_row} steps in a row "
                f"(global step {self.global_step}); check the data's rewards and the learning rate"
            )
        return None

    def count_tokens(self, attention_mask: torch.Tensor) -> None:
        """Add the real tokens of a training batch to ``tokens_seen`` (this process only)."""
        self.tokens_seen += int(attention_mask.sum())

    def log_stats(self, prefix: str, stats: dict[str, torch.Tensor | float], **kwargs: Any) -> None:
        """Log every entry of a loss's stats dict under ``prefix/``."""
        batch_size = kwargs.pop("batch_size", None)
        for key, value in stats.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self.log(f"{prefix}/{key}", value, batch_size=batch_size, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop frozen modules (reference, reward model) from the checkpoint: they are rebuilt."""
        checkpoint["tokens_seen"] = self.tokens_seen
        state = checkpoint.get("state_dict", {})
        for name in self.frozen_modules:
            for key in [k for k in state if k.startswith(f"{name}.")]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = checkpoint.get("tokens_seen", 0)


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
