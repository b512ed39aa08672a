"""``HistoryCSVLogger``: Lightning's CSVLogger without its one destructive habit (deleting an
existing ``metrics.csv`` when a run starts). A resumed run appends to the file; a fresh run in a
used directory first moves the old file aside to ``metrics.prev<N>.csv``. Header changes (new
metric names) rewrite the file atomically, earlier rows included."""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from lightning_rlhf.io import atomic_write


class _KeepingWriter(ExperimentWriter):
    """An ExperimentWriter that keeps (``append``) or moves aside the existing metrics file."""

    def __init__(self, log_dir: str, append: bool) -> None:
        self._append = append
        super().__init__(log_dir=log_dir)
        if append and os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))

    def _check_log_dir_exists(self) -> None:
        """Never delete: move an old file aside unless this run continues it."""
        path = self.metrics_file_path
        if self._append or not os.path.isfile(path):
            return
        stem, n = path[: -len(".csv")], 1
        while os.path.exists(f"{stem}.prev{n}.csv"):
            n += 1
        os.replace(path, f"{stem}.prev{n}.csv")

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as file:
            rows = list(csv.DictReader(file))
        with atomic_write(self.metrics_file_path, "w") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


class HistoryCSVLogger(CSVLogger):
    """CSVLogger that never deletes earlier rows of ``metrics.csv``.

    Args:
        append: continue the existing ``metrics.csv`` (a resumed run: the CLI sets this when
            ``--ckpt_path`` is given); otherwise an existing one is renamed ``metrics.prev<N>.csv``.
        save_dir, name, version, prefix, flush_logs_every_n_steps: as ``CSVLogger``.
    """

    def __init__(
        self,
        save_dir: str,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
        append: bool = False,
    ) -> None:
        super().__init__(save_dir, name, version, prefix, flush_logs_every_n_steps)
        self.append = append

    @property
    @rank_zero_experiment
    def experiment(self) -> _KeepingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir, append=self.append)
        return self._experiment
