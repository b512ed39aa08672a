"""Progress in log files: with stdout not a terminal the CLI prints ``LineProgress`` lines, which
are in the file while the run is going; a slow online phase gets a line of its own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
from jsonargparse import Namespace

from lightning_rlhf.callbacks.progress import LineProgress, eta_seconds, format_duration
from lightning_rlhf.cli import _choose_progress
from lightning_rlhf.rl.phases import ACTIVE_PHASES
from tests.algorithms.e2e import CONFIGS, TINY

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^\[progress\] step (\d+)/(\d+) \(\d+%\) loss \S+ .*tok/s \| \S+ ETA (\S+)$")


class SnapshotAt(L.Callback):
    """At optimiser step ``step``, copies the run's stdout file as it is to ``<file>.at<step>``
    (a run that is still going: later steps are not trained yet)."""

    def __init__(self, path: str, step: int) -> None:
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer: L.Trainer, *_) -> None:
        if trainer.global_step == self.step:
            sys.stdout.flush()
            Path(f"{self.path}.at{self.step}").write_text(Path(self.path).read_text())


def test_durations_and_eta():
    assert [format_duration(s) for s in (0, 59.9, 61, 3600 + 62)] == ["0:00", "0:59", "1:01",
                                                                       "1:01:02"]  # fmt: skip
    assert eta_seconds(10, 40, 20.0) == 60.0  # 2 s a step, 30 steps to go
    assert eta_seconds(0, 40, 1.0) is None and eta_seconds(5, 0, 1.0) is None


def _trainer(**kw) -> Namespace:
    return Namespace(callbacks=[], enable_progress_bar=None, **kw)


def test_the_cli_chooses_lines_off_a_terminal_and_the_bar_on_one():
    off_tty, on_tty = _trainer(), _trainer()
    _choose_progress(off_tty, interactive=False)
    _choose_progress(on_tty, interactive=True)
    assert off_tty.enable_progress_bar is False
    assert [c.class_path for c in off_tty.callbacks] == ["lightning_rlhf.callbacks.LineProgress"]
    assert on_tty.enable_progress_bar is None and on_tty.callbacks == []
    quiet = _trainer()
    quiet.enable_progress_bar = False  # asked for no progress: none added
    _choose_progress(quiet, interactive=False)
    assert quiet.callbacks == []
    mine = _trainer()  # configured by hand, kept as it is (and no bar beside it)
    mine.callbacks = [Namespace(class_path="lightning_rlhf.callbacks.LineProgress")]
    _choose_progress(mine, interactive=True)
    assert len(mine.callbacks) == 1 and mine.enable_progress_bar is False


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="every_n_steps >= 1"):
        LineProgress(every_n_steps=0)


def test_a_slow_phase_gets_a_line_while_it_runs(capsys):
    progress = LineProgress(phase_after_s=0.05)
    progress._total = 8
    trainer = SimpleNamespace(global_step=2)
    ACTIVE_PHASES.append(("generate", time.perf_counter()))
    try:
        thread = threading.Thread(target=progress._watch_phases, args=(trainer,), daemon=True)
        thread.start()
        time.sleep(0.3)
    finally:
        progress._stop.set()
        thread.join(timeout=5)
        ACTIVE_PHASES.pop()
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(re.fullmatch(r"\[progress\] step 3/8: generate running for 0:00", x)
                         for x in lines), lines  # fmt: skip
    assert 2 <= len(lines) <= 7, "one line per 0.05 s the phase has run, not one per poll"


@pytest.mark.slow
def test_a_fit_with_stdout_in_a_file_writes_progress_lines_as_it_goes(tmp_path):
    out_file = tmp_path / "stdout.log"
    callbacks = [
        {"class_path": "tests.test_progress.SnapshotAt",
         "init_args": {"path": str(out_file), "step": 7}},
        {"class_path": "lightning_rlhf.callbacks.LineProgress",
         "init_args": {"every_n_steps": 2, "every_s": 3600}},
    ]  # fmt: skip
    command = [
        sys.executable, "-m", "lightning_rlhf", "fit",
        "--config", str(CONFIGS / "sft" / "arithmetic.yaml"),
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_steps", "10",
        "--trainer.limit_val_batches", "0", "--trainer.callbacks", json.dumps(callbacks),
        "--model.init_args.policy", json.dumps({"config": TINY}),
        "--data.num_train", "160", "--data.num_val", "0", "--data.batch_size", "8",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with out_file.open("w") as stdout:
        done = subprocess.run(command, cwd=tmp_path, env=env, stdout=stdout,
                              stderr=subprocess.PIPE, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    during = [LINE.match(x) for x in (tmp_path / "stdout.log.at7").read_text().splitlines()]
    steps = [int(m.group(1)) for m in during if m]
    assert steps == [2, 4, 6], "lines every 2 steps, in the file before the run ended"
    final = [LINE.match(x) for x in out_file.read_text().splitlines()]
    final = [m for m in final if m]
    assert [int(m.group(1)) for m in final] == [2, 4, 6, 8, 10]
    assert {m.group(2) for m in final} == {"10"} and final[-1].group(3) == "0:00"
    assert "Epoch 0" not in out_file.read_text(), "no progress bar beside the lines"
