"""The KL coefficient as a callback: fixed, or adaptive to a target KL (Ziegler et al. 2019)."""

from __future__ import annotations

from typing import Any

import lightning as L

from lightning_rlhf.rl.kl import AdaptiveKLController, FixedKLController


def _batch_size(batch: Any) -> int | None:
    """Number of prompts in a data-module batch, when it can be read off."""
    if isinstance(batch, dict):
        for key in ("prompt_input_ids", "input_ids"):
            if key in batch and hasattr(batch[key], "shape"):
                return int(batch[key].shape[0])
        if isinstance(batch.get("prompt"), list):
            return len(batch["prompt"])
    return None


class KLController(L.Callback):
    """Owns the KL coefficient of an online RL module and hands it over every batch.

    Before each training batch it sets ``pl_module.kl_beta``. After each batch it looks for a
    rollout KL: when the module has set ``pl_module.last_rollout_kl`` (float, mean sequence KL
    of the rollout, nats) it updates the controller and consumes it (sets it back to None). The
    number of samples behind that KL is ``pl_module.last_rollout_size`` when set, else the batch's
    number of prompts. Logs ``train/kl_beta``; its state goes into the checkpoint.

    Args:
        init_beta: the (starting) coefficient.
        target: target sequence KL for the adaptive controller; None keeps beta fixed.
        horizon: the adaptive controller's horizon, in samples.
    """

    def __init__(
        self, init_beta: float = 0.05, target: float | None = None, horizon: int = 10000
    ) -> None:
        if target is None:
            self.controller = FixedKLController(init_beta)
        else:
            self.controller = AdaptiveKLController(init_beta, target, horizon)

    @property
    def beta(self) -> float:
        return self.controller.beta

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.kl_beta = self.beta

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        pl_module.kl_beta = self.beta

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        kl = getattr(pl_module, "last_rollout_kl", None)
        if kl is not None:
            size = getattr(pl_module, "last_rollout_size", None) or _batch_size(batch) or 1
            self.controller.update(float(kl), int(size))
            pl_module.last_rollout_kl = None
        pl_module.log("train/kl_beta", self.beta, on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.controller.load_state_dict(state_dict)
