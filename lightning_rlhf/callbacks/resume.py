"""Resume checks: a run resumed with different model, algorithm or data settings is refused in
one line listing the keys that differ (run-control settings may change), and the leftovers of an
interrupted write are removed when a run starts.

Model and data settings are every ``model.*`` and ``data.*`` key the checkpoint saved, except
:data:`RUN_CONTROL`; every ``trainer.*`` key (``max_steps``, callbacks, loggers,
``val_check_interval``, ...) and ``seed_everything`` are run control.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from lightning_rlhf.io import clean_leftovers

#: model/data keys that may change on resume (they do not change what is trained)
RUN_CONTROL = frozenset({"model.max_nonfinite_steps", "data.num_workers", "data.eval_batch_size"})
_IGNORED = frozenset({"_instantiator"})


class ResumeConfigError(ValueError):
    """A resume whose model/algorithm/data settings differ from the checkpoint's."""


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"<prefix>.a.b": 1}``; tuples compare as lists."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in _IGNORED:
                continue
            name = "class_path" if key == "_class_path" else key
            out.update(_flatten(item, f"{prefix}.{name}"))
        return out
    return {prefix: list(value) if isinstance(value, tuple) else value}


def config_differences(
    checkpoint: dict[str, Any], model_hparams: dict[str, Any], data_hparams: dict[str, Any]
) -> list[str]:
    """``key (checkpoint X, now Y)`` for every model/data setting that differs."""
    saved = {
        **_flatten(dict(checkpoint.get("hyper_parameters") or {}), "model"),
        **_flatten(dict(checkpoint.get("datamodule_hyper_parameters") or {}), "data"),
    }
    now = {**_flatten(dict(model_hparams), "model"), **_flatten(dict(data_hparams), "data")}
    if not checkpoint.get("datamodule_hyper_parameters"):  # not saved: nothing to compare
        now = {k: v for k, v in now.items() if not k.startswith("data.")}
    missing = object()
    diffs = []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key, missing), now.get(key, missing)
        if key in RUN_CONTROL or old == new:
            continue
        show = [("unset" if v is missing else repr(v)) for v in (old, new)]
        diffs.append(f"{key} (checkpoint {show[0]}, now {show[1]})")
    return diffs


def check_resume_config(
    path: str | Path,
    checkpoint: dict[str, Any],
    model_hparams: dict[str, Any],
    data_hparams: dict[str, Any],
) -> None:
    """Raise :class:`ResumeConfigError` (one line) when the settings differ from the
    checkpoint's."""
    diffs = config_differences(checkpoint, model_hparams, data_hparams)
    if diffs:
        raise ResumeConfigError(
            f"cannot resume from {path}: model/data settings differ from the checkpoint's: "
            f"{'; '.join(diffs)}. Resume with the run's own settings (its config.yaml) or start a "
            "new run in another trainer.default_root_dir"
        )


class ResumeCheck(L.Callback):
    """At the start of ``fit`` (global rank 0, before anything is written) remove the temporary
    files/folders interrupted writes left in the run directory and the checkpoint directory, and
    put back a folder that was moved aside but never replaced (see ``lightning_rlhf.io``)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.is_global_zero:
            for directory in self._directories(trainer):
                for name in clean_leftovers(directory):
                    rank_zero_info(f"cleaned up after an interrupted write: {directory}/{name}")
        trainer.strategy.barrier("resume_check_clean")

    @staticmethod
    def _directories(trainer: L.Trainer) -> list[Path]:
        root = Path(trainer.default_root_dir)
        found = [root, root / "checkpoints"]
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "dirpath", None):
                found.append(Path(callback.dirpath))
        return list(dict.fromkeys(found))
