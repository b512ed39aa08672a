"""Progress for log files: one compact line every N optimiser steps or S seconds (step, loss,
reward, KL, tokens/s, elapsed, ETA), and a line when a phase of an online step (generate, score,
logprobs, advantages, update) has run for S seconds. The CLI uses it instead of a progress bar
when stdout is not a terminal (SLURM, ``nohup``, CI), where a bar shows only at exit.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import lightning as L

from lightning_rlhf.rl.phases import ACTIVE_PHASES

#: what a progress line shows, in order: label and the logged metrics to look for (first wins)
FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("train/loss",)),
    ("reward", ("rollout/reward", "train/reward")),
    ("kl", ("rollout/kl_k1", "train/kl")),
    ("acc", ("train/accuracy",)),
)


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour) of a non-negative duration."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def eta_seconds(done: int, total: int, elapsed: float) -> float | None:
    """Remaining time if the rate so far holds (None before the first step or without a total)."""
    if done <= 0 or total <= 0:
        return None
    return elapsed / done * max(total - done, 0)


class LineProgress(L.Callback):
    """Print a progress line every ``every_n_steps`` optimiser steps or ``every_s`` seconds,
    whichever comes first (and at the last step), on global rank 0, e.g.::

        [progress] step 40/200 (20%) loss 0.412 reward 0.63 kl 0.021 | 812 tok/s | 0:31 ETA 2:04

    Args:
        every_n_steps: print after this many optimiser steps since the last line.
        every_s: print when this many seconds passed since the last line (at the next step).
        phase_after_s: an online step's phase running this long gets a line of its own (and
            another every ``phase_after_s``); 0 turns that off.
    """

    def __init__(
        self, every_n_steps: int = 10, every_s: float = 30.0, phase_after_s: float = 30.0
    ) -> None:
        if every_n_steps < 1 or every_s <= 0 or phase_after_s < 0:
            raise ValueError(
                "LineProgress: every_n_steps >= 1, every_s > 0 and phase_after_s >= 0 are needed, "
                f"got {every_n_steps}, {every_s}, {phase_after_s}"
            )
        self.every_n_steps, self.every_s, self.phase_after_s = every_n_steps, every_s, phase_after_s
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- progress lines -----------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        self._start, self._start_step = now, trainer.global_step
        self._last_time, self._last_step = now, trainer.global_step
        self._last_tokens = getattr(pl_module, "tokens_seen", 0)
        self._total = _total_steps(trainer)
        if trainer.is_global_zero and self.phase_after_s > 0:
            self._stop.clear()
            self._watcher = threading.Thread(
                target=self._watch_phases, args=(trainer,), daemon=True, name="LineProgress"
            )
            self._watcher.start()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_) -> None:
        step, now = trainer.global_step, time.perf_counter()
        if step == self._last_step or not trainer.is_global_zero:
            return
        due = step - self._last_step >= self.every_n_steps or now - self._last_time >= self.every_s
        if due or step >= self._total:
            self._print(self.line(trainer, pl_module, now))
            self._last_time, self._last_step = now, step
            self._last_tokens = getattr(pl_module, "tokens_seen", 0)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, err) -> None:
        self.on_train_end(trainer, pl_module)

    def line(self, trainer: L.Trainer, pl_module: L.LightningModule, now: float) -> str:
        """The progress line at ``now`` (``time.perf_counter``)."""
        step, total = trainer.global_step, self._total
        parts = [f"[progress] step {step}/{total}" + (f" ({step / total:.0%})" if total else "")]
        parts += _metric_parts(trainer.callback_metrics)
        tokens = getattr(pl_module, "tokens_seen", 0) - self._last_tokens
        text = " ".join(parts)
        if now > self._last_time and tokens > 0:
            text += f" | {tokens / (now - self._last_time):,.0f} tok/s"
        elapsed = now - self._start
        eta = eta_seconds(step - self._start_step, total - self._start_step, elapsed)
        text += f" | {format_duration(elapsed)}"
        return text + (f" ETA {format_duration(eta)}" if eta is not None else "")

    # --- slow phases --------------------------------------------------------------------------
    def _watch_phases(self, trainer: L.Trainer) -> None:
        """Background thread: a line when the innermost phase has run ``phase_after_s``."""
        reported: tuple[str, float, int] | None = None
        while not self._stop.wait(min(1.0, self.phase_after_s / 4)):
            phase = _innermost_phase()
            if phase is None:
                continue
            name, start = phase
            periods = int((time.perf_counter() - start) // self.phase_after_s)
            if periods >= 1 and reported != (name, start, periods):
                reported = (name, start, periods)
                running = format_duration(time.perf_counter() - start)
                self._print(
                    f"[progress] step {trainer.global_step + 1}/{self._total}: {name} running "
                    f"for {running}"
                )

    @staticmethod
    def _print(text: str) -> None:
        print(text, file=sys.stdout, flush=True)


def _innermost_phase() -> tuple[str, float] | None:
    try:
        return ACTIVE_PHASES[-1]
    except IndexError:  # empty, or emptied between the check and the read
        return None


def _metric_parts(metrics: dict[str, Any]) -> list[str]:
    parts = []
    for label, keys in FIELDS:
        key = next((k for k in keys if k in metrics), None)
        if key is not None:
            parts.append(f"{label} {float(metrics[key]):.4g}")
    return parts


def _total_steps(trainer: L.Trainer) -> int:
    """``max_steps``, or Lightning's estimate when the run is bounded by epochs (0 unknown)."""
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        estimate = trainer.estimated_stepping_batches
    except Exception:  # an iterable dataset without a length, say
        return 0
    return int(estimate) if estimate != float("inf") else 0
