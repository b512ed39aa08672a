"""Command line: ``python -m lightning_rlhf {fit,validate,test,predict,demo} --config x.yaml``.

A LightningCLI whose model is any :class:`RLHFModule` subclass (picked by ``class_path``) and whose
data module is always :class:`RLHFDataModule`; jsonargparse validates keys and types against the
typed ``__init__`` signatures, so a wrong key gets a one-line error naming it.
"""

from __future__ import annotations

import importlib.util
import sys

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from lightning_rlhf.algorithms import RLHFModule
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


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m lightning_rlhf`` and the ``lightning-rlhf`` script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        from lightning_rlhf.demo import main as demo_main

        demo_main(argv[1:])
        return
    RLHFCLI(args=argv)
