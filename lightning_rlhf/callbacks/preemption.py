"""Preemption: SIGTERM, SIGUSR1 and a first Ctrl-C finish the current step, save ``last.ckpt``
and end the process with a non-zero exit code, so a scheduler never mistakes a preempted run for
a finished one.

Exit codes: 128 + the signal number (SIGTERM 143, SIGUSR1 138, SIGINT 130). A second Ctrl-C
interrupts at once (Lightning's KeyboardInterrupt path, exit code 1) without saving a
half-updated state. Under SLURM with Lightning's auto-requeue (``SLURMEnvironment``) Lightning's
SIGUSR1 handler still runs first (save ``hpc_ckpt_*.ckpt``, ``scontrol requeue``).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

#: the signals handled, by name
SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class Preemption(L.Callback):
    """Stop cleanly on a preemption signal: the step in progress completes, ``last.ckpt`` is
    written through the run's ``ModelCheckpoint`` (``<default_root_dir>/checkpoints/last.ckpt``
    without one) and the process exits with ``128 + signum``.

    Args:
        signals: names of the signals to handle (any of ``SIGTERM``, ``SIGUSR1``, ``SIGINT``).
    """

    def __init__(self, signals: list[str] | None = None) -> None:
        names = list(SIGNALS if signals is None else signals)
        unknown = sorted(set(names) - set(SIGNALS))
        if unknown:
            raise ValueError(f"Preemption: unknown signals {unknown}; choose from {SIGNALS}")
        self.signals = [getattr(signal, name) for name in names if hasattr(signal, name)]
        self.received: int | None = None
        self._saved_step: int | None = None
        self._trainer: L.Trainer | None = None
        self._previous: dict[int, Any] = {}

    # --- signal handling ------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Install the handlers (after Lightning's, which are chained; Lightning restores the
        original handlers at teardown)."""
        self._trainer, self.received, self._saved_step = trainer, None, None
        for signum in self.signals:
            try:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals cannot be handled here
                self._previous.pop(signum, None)

    def _handle(self, signum: int, frame: Any) -> None:
        """Ask the loop to stop after the current step; a second SIGINT interrupts at once.

        SIGTERM replaces Lightning's notifier instead of chaining it: that one broadcasts inside
        the signal handler, which under DDP can meet another rank's gradient all-reduce and hang
        the job; here the ranks agree at the end of the step (:meth:`on_train_batch_end`).
        Processes Lightning launched itself still get the signal forwarded."""
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        rank_zero_info(
            f"{signal.Signals(signum).name} received: finishing the current step, then saving "
            "a checkpoint and exiting"
        )
        first, self.received = self.received is None, signum
        previous = self._previous.get(signum)
        if signum == signal.SIGTERM:
            launcher = self._trainer.strategy.launcher if self._trainer is not None else None
            if first and launcher is not None:
                launcher.kill(signum)
        elif callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)  # SIGUSR1 under SLURM: Lightning's requeue handler
        if self._trainer is not None:  # Lightning raises SIGTERMException after this step
            self._trainer._signal_connector.received_sigterm = True

    # --- saving -----------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        """Save at the end of the step during which a signal arrived (where ``ModelCheckpoint``
        saves too, so the resume point is the same as for a periodic checkpoint). The decision
        is taken together (any rank signalled: every rank saves and stops at this step), since a
        signal may reach the ranks of a job at different steps."""
        stop = self.received is not None or trainer.received_sigterm
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        self.received = self.received or int(signal.SIGTERM)
        trainer._signal_connector.received_sigterm = True  # every rank leaves after this step
        self._save(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Save if the signal arrived outside a training step (validation), and turn Lightning's
        exit code 0 into ``128 + signum``."""
        if not isinstance(exception, SIGTERMException):
            return
        signum = self.received or signal.SIGTERM
        if not trainer.sanity_checking and trainer.global_step > 0:
            self._save(trainer)
        exception.code = 128 + int(signum)

    def _save(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` once per global step (every rank takes part)."""
        if self._saved_step == trainer.global_step:
            return
        self._saved_step = trainer.global_step
        path = last_checkpoint_path(trainer)
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.save_last:
            callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
            path = Path(callback.last_model_path)
        else:
            trainer.save_checkpoint(path)
        rank_zero_info(f"saved {path} at global step {trainer.global_step}")


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """``<ModelCheckpoint dirpath or default_root_dir/checkpoints>/last.ckpt``."""
    callback = trainer.checkpoint_callback
    directory = getattr(callback, "dirpath", None) or Path(trainer.default_root_dir, "checkpoints")
    return Path(directory) / "last.ckpt"
