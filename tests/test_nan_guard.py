"""The NaN guard: a non-finite loss or gradient skips the step (weights and optimiser state
untouched), is counted and logged; ``max_nonfinite_steps`` in a row stop the run with a clear
message after writing ``last_good.ckpt`` of the last good state. NaNs are injected by callbacks."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_rlhf.algorithms.base import NonFiniteLossError
from lightning_rlhf.algorithms.sft import SFT
from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.models import ModelConfig
from tests.algorithms.e2e import TINY


class PoisonGrads(L.Callback):
    """Sets one gradient entry to NaN after the backward of the given (0-based) steps."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps
        self.weights: dict[int, torch.Tensor] = {}  # a weight before each step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.weights[trainer.global_step] = pl_module.policy.lm_head.weight.detach().clone()

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step in self.steps:
            pl_module.policy.lm_head.weight.grad[0, 0] = float("nan")


class PoisonLoss(PoisonGrads):
    """Makes the policy's hidden states NaN during the forward of the given steps."""

    def on_fit_start(self, trainer, pl_module) -> None:
        self.active = False
        norm = pl_module.policy.get_decoder().norm
        norm.register_forward_hook(lambda m, i, out: out * float("nan") if self.active else out)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.active = trainer.global_step in self.steps

    def on_after_backward(self, trainer, pl_module) -> None:
        pass


def _fit(root, callback: L.Callback, steps: int, max_nonfinite: int = 10) -> SFT:
    torch.manual_seed(0)
    data = RLHFDataModule(
        num_train=64, num_val=0, batch_size=8, max_prompt_length=16, max_response_length=8
    )
    model = SFT(ModelConfig(config=TINY), lr=1e-2, max_nonfinite_steps=max_nonfinite)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        default_root_dir=root,
        logger=CSVLogger(root, name="", version=""),
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_last=True), callback],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    return model


def _adam_steps(model: SFT) -> int:
    state = model.trainer.optimizers[0].state[model.policy.lm_head.weight]
    return int(state["step"])


@pytest.mark.parametrize("poison", [PoisonGrads, PoisonLoss], ids=["gradient", "loss"])
def test_a_nonfinite_step_is_skipped_counted_and_logged(tmp_path, poison):
    callback = poison({1, 2})
    model = _fit(tmp_path, callback, steps=5)
    w = callback.weights
    assert torch.equal(w[1], w[2]) and torch.equal(w[2], w[3]), "skipped steps changed weights"
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[3], w[4]), "good steps update"
    assert model.skipped_steps == 2 and model._nonfinite_in_a_row == 0
    assert _adam_steps(model) == model.trainer.global_step - 2, "Adam state saw only good steps"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    log = (tmp_path / "metrics.csv").read_text()
    assert "train/skipped_steps" in log and "train/nonfinite_steps" in log


@pytest.mark.parametrize("poison", [PoisonGrads, PoisonLoss], ids=["gradient", "loss"])
def test_n_in_a_row_stop_with_a_last_good_checkpoint(tmp_path, poison):
    callback = poison(set(range(2, 100)))
    what = "gradient" if poison is PoisonGrads else "loss"
    with pytest.raises(NonFiniteLossError, match=rf"SFT: {what} non-finite 3 steps in a row"):
        _fit(tmp_path, callback, steps=10, max_nonfinite=3)
    last_good = tmp_path / "checkpoints" / "last_good.ckpt"
    state = torch.load(last_good, weights_only=False)
    saved = state["state_dict"]["policy.lm_head.weight"]
    assert torch.equal(saved, callback.weights[2]), "the checkpoint holds the last good weights"
    assert torch.isfinite(saved).all() and state["skipped_steps"] == 3
