"""Held-out evaluation on the user's own prompts with the user's own scorer: greedy responses,
their mean reward, an accuracy where a reward threshold says what counts as correct, and a few
samples written to the run directory (``TaskEval`` does the same for the built-in tasks)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_rlhf.checks import check_range
from lightning_rlhf.data.collate import RLHFCollator
from lightning_rlhf.rl.rewards import RewardFunction, RewardSpec, check_reward_weights, load_rewards
from lightning_rlhf.rl.rollout import generate


class PromptEval(L.Callback):
    """Evaluate the policy on a held-out prompts file with a scorer, at the end of fit (and, with
    ``after_validation``, after every validation).

    Logs ``heldout/reward`` (mean over the prompts), ``heldout/accuracy`` (with ``correct_at``)
    and ``heldout/response_length`` to the run's loggers at the current optimiser step, writes
    the last result to ``<default_root_dir>/heldout.json`` and appends ``num_samples`` rows
    (step, prompt, response, reward, correct) per evaluation to ``heldout_samples.jsonl``. Runs
    on global rank 0 (single process or DDP).

    Args:
        prompts: the held-out prompts: a JSON/JSONL/Parquet/CSV file (glob, directory, or hub
            dataset) with a ``prompt`` field, read as ``data.dataset`` is in the "prompt" format
            (``data.columns``' prompt entry, ``hh_format``, ``chat_template`` and
            ``max_prompt_length`` apply); rows are checked when fitting starts.
        reward: a scorer as the online algorithms take it: ``module:function`` returning one
            float per (prompt, response), ``builtin:<task>``, a reward-model export directory,
            or a list of them summed with ``reward_weights``.
        reward_weights: one weight per reward of the list; None: 1.0 each.
        correct_at: a response counts as correct when its reward is at least this (1.0 for a
            scorer giving 1 to a right answer and less otherwise); None: no accuracy.
        max_new_tokens: greedy decoding budget.
        num_prompts: evaluate the first n prompts of the file (None: all of them).
        num_samples: rows appended to ``heldout_samples.jsonl`` per evaluation.
        batch_size: prompts per ``generate`` call.
        after_validation: also evaluate after every validation (not the sanity check).
    """

    def __init__(
        self,
        prompts: str,
        reward: RewardSpec,
        reward_weights: list[float] | None = None,
        correct_at: float | None = None,
        max_new_tokens: int = 32,
        num_prompts: int | None = None,
        num_samples: int = 4,
        batch_size: int = 64,
        after_validation: bool = False,
    ) -> None:
        where = "PromptEval"
        check_reward_weights(reward, reward_weights, where)
        check_range(where, "max_new_tokens", max_new_tokens, ge=1)
        check_range(where, "num_prompts", num_prompts, ge=1)
        check_range(where, "num_samples", num_samples, ge=0)
        check_range(where, "batch_size", batch_size, ge=1)
        if correct_at is not None and not math.isfinite(correct_at):
            raise ValueError(f"PromptEval: correct_at must be a finite number, got {correct_at}")
        self.prompts, self.reward, self.correct_at = prompts, reward, correct_at
        self.reward_weights = reward_weights
        self.max_new_tokens, self.num_prompts = max_new_tokens, num_prompts
        self.num_samples, self.batch_size = num_samples, batch_size
        self.after_validation = after_validation
        self._rows: list[dict[str, Any]] | None = None  # tokenised prompt rows, read once
        self._scorer: RewardFunction | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Read, check and tokenise the prompts before training (a bad file fails at once)."""
        if self._rows is None:
            datamodule = getattr(trainer, "datamodule", None)
            if not hasattr(datamodule, "prompt_dataset"):
                raise ValueError("PromptEval: fit with an RLHFDataModule (it reads the prompts)")
            dataset = datamodule.prompt_dataset(self.prompts)
            n = len(dataset) if self.num_prompts is None else min(self.num_prompts, len(dataset))
            self._rows = list(dataset.select(range(n)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.after_validation and not trainer.sanity_checking and trainer.is_global_zero:
            self._record(trainer, *self.evaluate(pl_module, trainer.global_step), final=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        result, samples = self.evaluate(pl_module, trainer.global_step)
        self._record(trainer, result, samples, final=True)
        (Path(trainer.default_root_dir) / "heldout.json").write_text(json.dumps(result, indent=2))
        rank_zero_info(
            f"held-out {self.prompts}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items())
        )

    def _record(
        self,
        trainer: L.Trainer,
        result: dict[str, float],
        samples: list[dict[str, Any]],
        *,
        final: bool,
    ) -> None:
        """Log ``heldout/*`` to every logger (``final``: written at once, the loggers having
        been finalised before ``on_fit_end``) and append the samples to
        ``heldout_samples.jsonl``."""
        for logger in trainer.loggers:
            logger.log_metrics({f"heldout/{k}": v for k, v in result.items()}, trainer.global_step)
            if final:
                logger.finalize("success")
        root = Path(trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        with (root / "heldout_samples.jsonl").open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in samples)

    @torch.no_grad()
    def evaluate(
        self, pl_module: L.LightningModule, step: int
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Greedy responses to the prompts, scored: (metrics, the samples written)."""
        policy, tokenizer = pl_module.policy, pl_module.tokenizer
        device = next(policy.parameters()).device  # after fit, the module may be back on the CPU
        collate = RLHFCollator("prompt", tokenizer.pad_token_id)
        prompts, responses, lengths = [], [], []
        for start in range(0, len(self._rows), self.batch_size):
            batch = collate(self._rows[start : start + self.batch_size])
            rollout = generate(
                policy,
                tokenizer,
                batch["prompt_input_ids"].to(device),
                batch["prompt_attention_mask"].to(device),
                max_new_tokens=self.max_new_tokens,
            )
            prompts += batch["prompt"]
            responses += rollout.responses
            lengths.append(rollout.response_mask.sum(-1).float().cpu())  # (B,)
        rewards = self.scorer(device)(prompts, responses).float().cpu()  # (N,)
        result = {
            "reward": float(rewards.mean()),
            "response_length": float(torch.cat(lengths).mean()),
        }
        correct = [None] * len(rewards)
        if self.correct_at is not None:
            correct = (rewards >= self.correct_at).tolist()
            result["accuracy"] = sum(correct) / len(correct)
        samples = [
            {"step": step, "prompt": p, "response": r, "reward": float(s), "correct": c}
            for p, r, s, c in list(zip(prompts, responses, rewards, correct))[: self.num_samples]
        ]
        return result, samples

    def scorer(self, device: torch.device) -> RewardFunction:
        """The reward function, loaded on first use (a reward model on ``device``)."""
        if self._scorer is None:
            self._scorer = load_rewards(
                self.reward, self.reward_weights, where="PromptEval", device=device
            )
        return self._scorer
