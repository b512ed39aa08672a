"""Built-in tasks that need nothing downloaded: problems, a teacher, a reward and a tokenizer.

``get_task("arithmetic", carry_forget=0.7)`` builds a task; ``get_tokenizer("arithmetic")`` its
tokenizer. ``scratchpad`` is the long-response task (column addition written out), on the same
character tokenizer.
"""

from dataclasses import fields

from transformers import PreTrainedTokenizerFast

from lightning_rlhf.data.tasks.arithmetic import ArithmeticTask, build_tokenizer
from lightning_rlhf.data.tasks.scratchpad import ScratchpadTask

TASKS = {"arithmetic": ArithmeticTask, "scratchpad": ScratchpadTask}
"""Task name -> task class (a dataclass whose fields are the task's options)."""

_TOKENIZERS = {"arithmetic": build_tokenizer, "scratchpad": build_tokenizer}


def _check_name(name: str) -> None:
    """Raise a one-line ValueError naming the known tasks when ``name`` is not one."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")


def get_task(name: str, **options: object) -> ArithmeticTask:
    """Build the task ``name`` with ``options`` (its dataclass fields)."""
    _check_name(name)
    cls = TASKS[name]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for task {name!r}; "
            f"known: {', '.join(sorted(known))}"
        )
    return cls(**options)


def get_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The tokenizer of task ``name``."""
    _check_name(name)
    return _TOKENIZERS[name]()


__all__ = [
    "TASKS",
    "ArithmeticTask",
    "ScratchpadTask",
    "build_tokenizer",
    "get_task",
    "get_tokenizer",
]
