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
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

from lightning_rlhf.algorithms import RLHFModule
from lightning_rlhf.algorithms.base import NonFiniteLossError
from lightning_rlhf.cli_errors import OneLineErrorParser, unwrap_config_error
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


#: errors that mean "the input is wrong" (data, config values, paths, strategy, Trainer settings
#: Lightning refuses, a run that kept producing NaN): the CLI prints their one-line message
#: instead of a traceback
USER_ERRORS = (ValueError, OSError, NonFiniteLossError, MisconfigurationException)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m lightning_rlhf`` and the ``lightning-rlhf`` script.

    An input error ends the process with its one-line message and exit code 2 (a failing
    ``__init__`` check is unwrapped from jsonargparse's report, a bad config key or value names
    its key and YAML file); set ``LIGHTNING_RLHF_DEBUG=1`` to get the traceback instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "demo":
            from lightning_rlhf.demo import main as demo_main

            demo_main(args[1:])
        else:
            parser_class = type("Parser", (OneLineErrorParser,), {"argv": args})
            RLHFCLI(args=argv, parser_class=parser_class)  # None: LightningCLI reads sys.argv
    except USER_ERRORS as err:
        if os.environ.get("LIGHTNING_RLHF_DEBUG") == "1":
            raise
        err = unwrap_config_error(err)
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"error: {type(err).__name__}: {message}", file=sys.stderr)
        print("(set LIGHTNING_RLHF_DEBUG=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
