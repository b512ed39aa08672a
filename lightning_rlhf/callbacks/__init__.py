"""Callbacks shared by every algorithm: held-out evaluation (built-in tasks, or the user's prompts
and scorer), sample logging, Hugging Face export, progress (a bar on a terminal, lines in log
files), and the set the CLI adds by default (preemption, RNG state, resume checks, the memory
plan)."""

from lightning_rlhf.callbacks.export import HFExport
from lightning_rlhf.callbacks.memory_plan import MemoryPlan
from lightning_rlhf.callbacks.preemption import Preemption
from lightning_rlhf.callbacks.progress import LineProgress
from lightning_rlhf.callbacks.progress_bar import EpochProgressBar
from lightning_rlhf.callbacks.prompt_eval import PromptEval
from lightning_rlhf.callbacks.resume import ResumeCheck
from lightning_rlhf.callbacks.rng_state import RNGState
from lightning_rlhf.callbacks.task_eval import SampleLogger, TaskEval, evaluate_policy

__all__ = [
    "EpochProgressBar",
    "HFExport",
    "LineProgress",
    "MemoryPlan",
    "Preemption",
    "PromptEval",
    "RNGState",
    "ResumeCheck",
    "SampleLogger",
    "TaskEval",
    "evaluate_policy",
]
