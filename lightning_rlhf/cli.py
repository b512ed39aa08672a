"""Command line: ``python -m lightning_rlhf {fit,validate,test,predict,demo} --config x.yaml``.

A LightningCLI whose model is any :class:`RLHFModule` subclass (picked by ``class_path``) and whose
data module is always :class:`RLHFDataModule`; jsonargparse validates keys and types against the
typed ``__init__`` signatures, so a wrong key gets a one-line error naming it.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from lightning_rlhf.algorithms import RLHFModule
from lightning_rlhf.algorithms.base import NonFiniteLossError
from lightning_rlhf.data import RLHFDataModule


class RLHFCLI(LightningCLI):
    """LightningCLI with our base classes and defaults (seed 0, config saved with overwrite)."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs) -> None:
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
        ``<default_root_dir>/checkpoints``)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if trainer.logger not in (None, True):
            return
        root = trainer.default_root_dir or "runs/default"
        trainer.default_root_dir = root
        trainer.logger = [_logger("CSVLogger", root)]
        if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
            trainer.logger.append(_logger("TensorBoardLogger", root))


def _logger(name: str, root: str) -> Namespace:
    init_args = Namespace(save_dir=root, name="", version="")
    return Namespace(class_path=f"lightning.pytorch.loggers.{name}", init_args=init_args)


#: errors that mean "the input is wrong" (data, config values, paths, strategy, a run that kept
#: producing NaN): the CLI prints their one-line message instead of a traceback
USER_ERRORS = (ValueError, OSError, NonFiniteLossError)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m lightning_rlhf`` and the ``lightning-rlhf`` script.

    An input error ends the process with its one-line message and exit code 2; set
    ``LIGHTNING_RLHF_DEBUG=1`` to get the traceback instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "demo":
            from lightning_rlhf.demo import main as demo_main

            demo_main(args[1:])
        else:
            RLHFCLI(args=argv)  # None: LightningCLI reads sys.argv itself
    except USER_ERRORS as err:
        if os.environ.get("LIGHTNING_RLHF_DEBUG") == "1":
            raise
        err = unwrap_config_error(err)
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"error: {type(err).__name__}: {message}", file=sys.stderr)
        print("(set LIGHTNING_RLHF_DEBUG=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def unwrap_config_error(err: BaseException) -> BaseException:
    """The error an ``__init__`` check raised, out of the errors jsonargparse wraps it in.

    A class given by ``class_path`` is instantiated inside a Union (the model's type is
    ``RLHFModule | None``), so jsonargparse re-raises a failing ``__init__`` check as "Does not
    validate against any of the Union subtypes" with the real error as its ``__cause__``; every
    error raised by jsonargparse itself is unwrapped down to its first cause raised elsewhere.
    """
    while err.__cause__ is not None and _raised_in(err, "jsonargparse"):
        err = err.__cause__
    return err


def _raised_in(err: BaseException, package: str) -> bool:
    """Whether the frame that raised ``err`` belongs to ``package``."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename
