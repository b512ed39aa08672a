"""Command line: ``python -m lightning_rlhf {fit,validate,test,predict,demo} --config x.yaml``.

A LightningCLI whose model is any :class:`RLHFModule` subclass (picked by ``class_path``) and whose
data module is always :class:`RLHFDataModule`; jsonargparse validates keys and types against the
typed ``__init__`` signatures, so a wrong key gets a one-line error naming it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator

from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from lightning_rlhf.algorithms import RLHFModule
from lightning_rlhf.algorithms.base import NonFiniteLossError
from lightning_rlhf.callbacks.resume import check_resume_config
from lightning_rlhf.cli_errors import OneLineErrorParser, unwrap_config_error
from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.io import REQUIRED_KEYS, RESUME_KEYS, resolve_checkpoint
from lightning_rlhf.models.loading import check_model_path
from lightning_rlhf.quiet import silence_upstream_noise

#: callbacks every run gets unless its config already lists them (see the README's Reliability)
DEFAULT_CALLBACKS = (
    "lightning_rlhf.callbacks.Preemption",
    "lightning_rlhf.callbacks.RNGState",
    "lightning_rlhf.callbacks.ResumeCheck",
    "lightning_rlhf.callbacks.MemoryPlan",
)


class RLHFCLI(LightningCLI):
    """LightningCLI with our base classes and defaults (seed 0, config saved with overwrite), the
    reliability defaults (atomic checkpoint writes, preemption, RNG state, resume checks) and a
    ``--ckpt_path`` that is checked (readable, same model/data settings), never merged."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs) -> None:
        silence_upstream_noise()
        super().__init__(
            model_class=RLHFModule,
            datamodule_class=RLHFDataModule,
            subclass_mode_model=True,
            subclass_mode_data=False,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )

    def before_instantiate_classes(self) -> None:
        """Default loggers when the config sets none: CSV always, TensorBoard when installed, both
        writing straight into ``trainer.default_root_dir`` (so checkpoints land in
        ``<default_root_dir>/checkpoints``). Configured loggers (``configs/trainer/wandb.yaml``,
        ``mlflow.yaml``) get the CSV logger beside them unless they list one; ``logger: false``
        means none."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        _check_policy_path(config)
        _add_reliability_defaults(trainer)
        _choose_progress(trainer, interactive=sys.stdout.isatty())
        _add_progress_bar_default(trainer)
        if trainer.logger is False:
            return
        configured = trainer.logger not in (None, True)
        if configured and _lists_csv(trainer.logger):
            return
        root = trainer.default_root_dir or "runs/default"
        trainer.default_root_dir = root
        csv = _logger("lightning_rlhf.loggers.HistoryCSVLogger", root)
        csv.init_args.append = bool(config.get("ckpt_path"))  # a resume continues metrics.csv
        if configured:
            others = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
            trainer.logger = [csv, *others]
            return
        trainer.logger = [csv]
        if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
            trainer.logger.append(_logger("lightning.pytorch.loggers.TensorBoardLogger", root))

    def _parse_ckpt_path(self) -> None:
        """Replaces LightningCLI's, which loads the checkpoint (a traceback when it is damaged)
        and silently overrides the model config with the checkpoint's hyperparameters. Here an
        unreadable checkpoint gets one line (an unreadable ``last*.ckpt`` falls back to the newest
        loadable one beside it, warned), and ``before_fit`` compares the settings."""
        self._resume: tuple | None = None
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
            return
        keys = REQUIRED_KEYS + RESUME_KEYS if subcommand == "fit" else REQUIRED_KEYS
        path, checkpoint = resolve_checkpoint(ckpt_path, warn=rank_zero_warn, required=keys)
        self.config[subcommand].ckpt_path = str(path)
        self._resume = (path, checkpoint)

    def before_fit(self) -> None:
        """Refuse a resume whose model/algorithm/data settings differ from the checkpoint's."""
        if getattr(self, "_resume", None) is not None:
            (path, checkpoint), self._resume = self._resume, None
            check_resume_config(path, checkpoint, self.model.hparams, self.datamodule.hparams)
            # for this fit only (after_fit restores the filters):
            self._resume_filters = warnings.catch_warnings()
            self._resume_filters.__enter__()
            # Lightning's "dataloader is not resumable" looks for a stateful DataLoader; ours
            # resume mid-epoch through their samplers (tests/test_resume.py), so it is wrong here
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that")
            # a resume continues in the directory it left: its checkpoints are expected there
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")

    def after_fit(self) -> None:
        """Put back the warning filters a resume's ``before_fit`` changed."""
        filters, self._resume_filters = getattr(self, "_resume_filters", None), None
        if filters is not None:
            filters.__exit__(None, None, None)


def _check_policy_path(config: Namespace) -> None:
    """A policy to load from a missing local path (the SFT export, say) fails here, before any
    model is built or data tokenised, saying which run makes it."""
    init_args = config.get("model") and config.model.get("init_args")
    policy = init_args.get("policy") if init_args else None
    path = policy.get("name_or_path") if isinstance(policy, Namespace) else None
    if path and policy.get("config") is None:
        check_model_path(path)


def _add_reliability_defaults(trainer: Namespace) -> None:
    """Atomic checkpoint writes (``io.AtomicCheckpointIO``) when no plug-in is configured, and
    each of :data:`DEFAULT_CALLBACKS` the config does not list already."""
    if trainer.plugins is None:
        trainer.plugins = [Namespace(class_path="lightning_rlhf.io.AtomicCheckpointIO")]
    callbacks = trainer.callbacks or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    listed = {str(getattr(c, "class_path", "")).rsplit(".", 1)[-1] for c in callbacks}
    for class_path in DEFAULT_CALLBACKS:
        if class_path.rsplit(".", 1)[-1] not in listed:
            callbacks.append(Namespace(class_path=class_path, init_args=Namespace()))
    trainer.callbacks = callbacks


def _choose_progress(trainer: Namespace, interactive: bool) -> None:
    """A progress bar on a terminal; elsewhere (a log file, a scheduler's log) ``LineProgress``
    lines instead of a bar that shows only at exit. ``enable_progress_bar`` set to true or false
    keeps the bar or no progress at all; a ``LineProgress`` or a progress bar in the config is
    kept as configured."""
    callbacks = trainer.callbacks
    names = [str(getattr(c, "class_path", "")).rsplit(".", 1)[-1] for c in callbacks]
    if "LineProgress" in names:
        trainer.enable_progress_bar = False
    elif any("ProgressBar" in name for name in names):
        return
    elif trainer.enable_progress_bar is None and not interactive:
        trainer.enable_progress_bar = False
        line = Namespace(class_path="lightning_rlhf.callbacks.LineProgress", init_args=Namespace())
        callbacks.append(line)


def _lists_csv(loggers) -> bool:
    """Whether the configured logger(s) include a CSV logger (``metrics.csv``)."""
    loggers = loggers if isinstance(loggers, list) else [loggers]
    return any(str(getattr(x, "class_path", "")).endswith("CSVLogger") for x in loggers)


def _add_progress_bar_default(trainer: Namespace) -> None:
    """``callbacks.EpochProgressBar`` (no "Epoch 0/-2") where Lightning would pick its Rich bar:
    the bar is on, ``rich`` is installed and the config names no progress bar of its own."""
    if trainer.enable_progress_bar is False or not importlib.util.find_spec("rich"):
        return
    names = [str(getattr(c, "class_path", "")).rsplit(".", 1)[-1] for c in trainer.callbacks]
    if not any("ProgressBar" in name for name in names):
        trainer.callbacks.append(
            Namespace(class_path="lightning_rlhf.callbacks.EpochProgressBar", init_args=Namespace())
        )


def _logger(class_path: str, root: str) -> Namespace:
    init_args = Namespace(save_dir=root, name="", version="")
    return Namespace(class_path=class_path, init_args=init_args)


#: errors that mean "the input is wrong" (data, config values, paths, strategy, Trainer settings
#: Lightning refuses, a run that kept producing NaN): the CLI prints their one-line message
#: instead of a traceback
USER_ERRORS = (ValueError, OSError, NonFiniteLossError, MisconfigurationException)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """An input error (:data:`USER_ERRORS`) raised in the block ends the process with its
    one-line message and exit code 2 (a failing ``__init__`` check unwrapped from jsonargparse's
    report); with ``LIGHTNING_RLHF_DEBUG=1`` it propagates with its traceback instead."""
    try:
        yield
    except USER_ERRORS as err:
        if os.environ.get("LIGHTNING_RLHF_DEBUG") == "1":
            raise
        err = unwrap_config_error(err)
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"error: {type(err).__name__}: {message}", file=sys.stderr)
        print("(set LIGHTNING_RLHF_DEBUG=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    """``fit | validate | test | predict`` (``python -m lightning_rlhf`` adds ``demo``).

    An input error ends the process with its one-line message and exit code 2 (a bad config key
    or value names its key and YAML file); see :func:`one_line_errors`.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    with one_line_errors():
        parser_class = type("Parser", (OneLineErrorParser,), {"argv": args})
        RLHFCLI(args=argv, parser_class=parser_class)  # None: LightningCLI reads sys.argv
