"""Callbacks the fault tests load by class path into a real ``python -m lightning_rlhf fit``
subprocess: a checkpoint write that stalls halfway (so the test can SIGKILL it there) and a disk
that fills up."""

from __future__ import annotations

import io
import time
from pathlib import Path

import lightning as L
import torch

import lightning_rlhf.io as rlhf_io


class StallLastWrite(L.Callback):
    """From global step ``step`` on, a write of ``last.ckpt`` puts half its bytes into the
    temporary file, fsyncs, touches ``marker`` and sleeps (the test kills the process then)."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        real = rlhf_io.atomic_save

        def stalling(obj, path):
            if Path(path).name != "last.ckpt" or trainer.global_step < self.step:
                return real(obj, path)
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            data = buffer.getvalue()
            with rlhf_io.atomic_write(path) as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                self.marker.write_text(str(trainer.global_step))
                time.sleep(120)
                handle.write(data[len(data) // 2 :])

        rlhf_io.atomic_save = stalling


class FillDisk(L.Callback):
    """At global step ``step``, fill the filesystem of ``directory`` with a filler file."""

    def __init__(self, step: int, directory: str) -> None:
        self.step, self.directory, self.done = step, Path(directory), False

    def on_train_batch_end(self, trainer: L.Trainer, *_) -> None:
        if trainer.global_step < self.step or self.done:
            return
        self.done = True
        chunk = b"\0" * (1 << 16)
        try:
            with open(self.directory / "filler.bin", "wb") as handle:
                while True:
                    handle.write(chunk)
                    handle.flush()
        except OSError:
            pass
