"""A default run of every algorithm prints at most 5 warning lines (and every silenced upstream
warning is silenced by message, category and module, not wholesale).

One subprocess (a real stderr, the import cost paid once) fits every algorithm's shipped
``configs/<algo>/arithmetic.yaml`` in turn on a tiny model for 4 steps, with a checkpoint every 2
steps; each fit starts with fresh warning registries, as a process of its own would. Run by hand
with ``python -m tests.test_quiet_logs OUT_DIR [algo ...]``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from lightning_rlhf.quiet import UPSTREAM_NOISE
from tests.algorithms.e2e import CONFIGS, TINY

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = (
    "sft", "reward_model", "dpo", "pro", "alol", "ppo", "mappo", "p3o", "rloo", "remax", "grpo",
    "dpo_lora",  # DPO with a LoRA adapter: what peft adds
)  # fmt: skip
ONLINE = {"ppo", "mappo", "p3o", "rloo", "remax", "grpo"}
MARK = "@@@ fit "
MAX_WARNING_LINES = 5
#: what a warning looks like in a log: Python's / Lightning's ``file.py:N:`` prefix, a category
#: name, a logging level, a deprecation, or transformers' load report
WARNING_LINE = re.compile(
    r"\.py:\d+: |\b\w*Warning\b|^WARNING|\[warning|deprecat|LOAD REPORT| \| (UNEXPECTED|MISSING)",
    re.IGNORECASE,
)


def _args(algo: str, root: Path) -> list[str]:
    """The shipped config, shrunk: 4 steps of 8 rows (4 prompts online), tiny model."""
    export = str(root / "sft" / "export")
    if algo == "sft":
        policy = ["--model.init_args.policy", json.dumps({"config": TINY})]
    elif algo.endswith("_lora"):
        lora = {"name_or_path": export, "lora": {"r": 4, "alpha": 8}}
        policy = ["--model.init_args.policy", json.dumps(lora)]
    else:
        policy = ["--model.init_args.policy.name_or_path", export]
    extra = ["--data.batch_size", "4" if algo in ONLINE else "8"]
    if algo in ONLINE:
        extra += ["--model.init_args.max_new_tokens", "4", "--model.init_args.minibatch_size",
                  "null"]  # fmt: skip
    if algo in ("rloo", "grpo"):
        extra += ["--model.init_args.samples_per_prompt", "2"]
    if algo == "alol":
        extra += ["--model.init_args.value_head", json.dumps({"epochs": 2, "batch_size": 8})]
    return [
        "--config", str(CONFIGS / algo.removesuffix("_lora") / "arithmetic.yaml"),
        "--trainer.default_root_dir", str(root / algo), "--trainer.max_steps", "4",
        "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
        "--trainer.log_every_n_steps", "2",
        "--data.num_train", "64", "--data.num_val", "16", *policy, *extra,
    ]  # fmt: skip


def _shrink_callbacks(trainer) -> None:
    """A checkpoint every 2 steps (so its warnings would show) and 16 evaluation prompts."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_rlhf.callbacks import TaskEval

    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback._every_n_train_steps:
            callback._every_n_train_steps = 2
        if isinstance(callback, TaskEval):
            callback.num_prompts = 16


def _show_every_line(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` that marks every line of a (multi-line) warning as it prints."""
    text = warnings.formatwarning(message, category, filename, lineno, line)
    for part in text.rstrip("\n").splitlines():
        print(f"WARNING| {part}", file=sys.stderr)


def run_algorithms(root: Path, algos: list[str]) -> None:
    """Fit each algorithm in turn, each preceded by a ``MARK`` line (SFT first: the others start
    from its export); every line of every warning printed is marked ``WARNING|``."""
    from lightning_rlhf.cli import RLHFCLI

    warnings.showwarning = _show_every_line
    for algo in algos:
        print(f"{MARK}{algo}", flush=True)
        with warnings.catch_warnings():  # entering resets the "already shown" registries
            once = getattr(logging.Logger, "warning_once", None)  # transformers' lru_cache
            if hasattr(once, "cache_clear"):
                once.cache_clear()
            cli = RLHFCLI(args=_args(algo, root), run=False)
            _shrink_callbacks(cli.trainer)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        sys.stdout.flush()
        sys.stderr.flush()


def warning_lines(log: str) -> dict[str, list[str]]:
    """The warning lines of each algorithm's section of a :func:`run_algorithms` log."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in log.splitlines():
        if line.startswith(MARK):
            current = sections.setdefault(line[len(MARK) :], [])
        elif current is not None and WARNING_LINE.search(line):
            current.append(line)
    return sections


def test_the_line_counter_sees_the_warnings_a_log_holds():
    log = "\n".join([
        f"{MARK}sft", "lightning/x.py:3: Found 2 module(s) in eval mode", "Epoch 0",
        f"{MARK}dpo", "x.py:9: FutureWarning: old", "lm_head.weight | UNEXPECTED | ",
        "held-out accuracy=0.5",
    ])  # fmt: skip
    assert {k: len(v) for k, v in warning_lines(log).items()} == {"sft": 1, "dpo": 2}


def test_upstream_filters_are_precise():
    """Every silenced warning names its message, category and module (no blanket ignore)."""
    for noise in UPSTREAM_NOISE:
        assert noise.message and noise.module.startswith(("lightning", "transformers", "peft"))
        assert noise.category is not Warning and noise.why


@pytest.mark.slow
def test_a_default_run_of_every_algorithm_prints_at_most_5_warning_lines(tmp_path):
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "",
        "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
    }  # fmt: skip
    env.pop("TRITON_INTERPRET", None)  # what a user's CPU run has
    command = [sys.executable, "-u", "-m", "tests.test_quiet_logs", str(tmp_path), *ALGORITHMS]
    out = subprocess.run(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:]
    found = warning_lines(out.stdout)
    assert sorted(found) == sorted(ALGORITHMS), out.stdout[-4000:]
    noisy = {algo: lines for algo, lines in found.items() if len(lines) > MAX_WARNING_LINES}
    assert not noisy, json.dumps(noisy, indent=1)



def _module(cls):
    from lightning_rlhf.data.tasks import get_tokenizer
    from lightning_rlhf.models import ModelConfig

    module = cls(ModelConfig(config=TINY))
    module.attach_tokenizer(get_tokenizer("arithmetic"))
    module.configure_model()
    return module


def test_our_eval_mode_check_names_a_stray_module_and_spares_frozen_ones(recwarn):
    from lightning_rlhf.algorithms.dpo import DPO
    from lightning_rlhf.algorithms.sft import SFT

    dpo = _module(DPO)  # its frozen reference is in eval mode on purpose
    assert not dpo.reference.training
    dpo.on_train_start()
    assert not [w for w in recwarn if "eval mode" in str(w.message)]
    sft = _module(SFT)
    sft.policy.model.layers[1].eval()
    with pytest.warns(UserWarning, match=r"SFT: policy in eval mode at the start of training"):
        sft.on_train_start()



def test_a_resume_does_not_warn_about_its_own_checkpoints_a_fresh_run_does(tmp_path, recwarn):
    from lightning_rlhf.cli import main

    def fit(steps: int, *extra: str) -> list[str]:
        recwarn.clear()
        main(["fit", "--config", str(CONFIGS / "sft" / "arithmetic.yaml"),
              "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", str(steps),
              "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
              "--data.num_train", "64", "--data.num_val", "0", "--data.batch_size", "8",
              "--model.init_args.policy", json.dumps({"config": TINY}), *extra])  # fmt: skip
        return [str(w.message) for w in recwarn if "is not empty" in str(w.message)]

    assert fit(2) == []
    assert fit(3, "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")) == []
    assert len(fit(2)) == 1, "a fresh run into used checkpoints still says so"


def test_a_module_driven_by_hand_logs_nothing_and_warns_nothing(recwarn):
    """Scripts and tests call steps outside a Trainer: no "self.log() ... trainer" warning."""
    from lightning_rlhf.algorithms.sft import SFT
    from lightning_rlhf.data import RLHFDataModule

    dm = RLHFDataModule(num_train=8, num_val=0, batch_size=4, max_prompt_length=16,
                        max_response_length=8)  # fmt: skip
    dm.setup("fit")
    sft = _module(SFT)
    loss = sft.training_step(next(iter(dm.train_dataloader())), 0)
    assert loss.isfinite()
    assert not [w for w in recwarn if "self.log" in str(w.message)]


if __name__ == "__main__":
    run_algorithms(Path(sys.argv[1]), sys.argv[2:])
