"""Callbacks shared by every algorithm: task evaluation, sample logging, Hugging Face export."""

from lightning_rlhf.callbacks.export import HFExport
from lightning_rlhf.callbacks.task_eval import SampleLogger, TaskEval, evaluate_policy

__all__ = ["HFExport", "SampleLogger", "TaskEval", "evaluate_policy"]
