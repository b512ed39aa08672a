"""Held-out evaluation on a built-in task (greedy accuracy; sampled reward, KL, distinct-2) and a
callback that logs a few sampled responses with their rewards.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import PreTrainedTokenizerBase

from lightning_rlhf.data.tasks import get_task
from lightning_rlhf.metrics import GenerationMetrics
from lightning_rlhf.models import response_logprobs, unwrap_peft
from lightning_rlhf.rl.rollout import generate, left_pad_prompts


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def evaluate_policy(
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task_name: str = "arithmetic",
    *,
    reference: nn.Module | None = None,
    num_prompts: int = 500,
    max_new_tokens: int = 8,
    batch_size: int = 250,
    task_options: dict | None = None,
) -> dict[str, float]:
    """Accuracy by greedy decoding on held-out prompts, plus reward / KL / distinct-2 / length of
    responses sampled at temperature 1 (KL is the mean of sum_t log pi/pi_ref over the samples,
    an unbiased estimate of KL(pi || pi_ref); omitted without a reference).
    """
    task = get_task(task_name, **(task_options or {}))
    device = next(policy.parameters()).device

    def greedy(prompts: list[str]) -> list[str]:
        ids, mask = left_pad_prompts(tokenizer, prompts, device)
        return generate(policy, tokenizer, ids, mask, max_new_tokens=max_new_tokens).responses

    result = task.evaluate(greedy, n=num_prompts, batch_size=batch_size)
    prompts = [r["prompt"] for r in task.heldout_prompts(num_prompts)]
    metrics = GenerationMetrics(distinct_unit="char")
    for chunk in _batches(prompts, batch_size):
        ids, mask = left_pad_prompts(tokenizer, chunk, device)
        rollout = generate(
            policy, tokenizer, ids, mask, max_new_tokens=max_new_tokens, do_sample=True
        )
        rewards = torch.tensor(task.reward(chunk, rollout.responses))
        kl = None
        if reference is not None:
            seq, attn, resp = rollout.sequences()
            kl = (
                response_logprobs(policy, seq, attn, resp)
                - response_logprobs(reference, seq, attn, resp)
            ).sum(-1)
        metrics.update(
            rollout.responses,
            rewards,
            kl.cpu() if kl is not None else None,
            rollout.response_mask.sum(-1).cpu(),
        )
    sampled = metrics.compute()
    result.update({f"sampled_{k}" if k == "reward" else k: v for k, v in sampled.items()})
    return result


def task_reward(task_name: str):
    """The ``reward(prompts, responses) -> list[float]`` function of a built-in task."""
    get_task(task_name)  # one-line error for an unknown task
    return importlib.import_module(f"lightning_rlhf.data.tasks.{task_name}").reward


class TaskEval(L.Callback):
    """Evaluate the policy on a built-in task's held-out prompts at the end of fit (and, with
    ``every_n_epochs``, after validation); logs ``eval/*`` and writes ``eval.json`` to the run dir.

    Args:
        task: built-in task name.
        num_prompts: held-out prompts per evaluation.
        max_new_tokens: generation budget.
        every_n_epochs: also evaluate after every n-th validation (0: only at the end of fit).
        task_options: keyword arguments of the task (e.g. ``{max_digits: 4}``), as the data's.
    """

    def __init__(
        self,
        task: str = "arithmetic",
        num_prompts: int = 500,
        max_new_tokens: int = 8,
        every_n_epochs: int = 0,
        task_options: dict | None = None,
    ) -> None:
        self.task, self.num_prompts, self.max_new_tokens = task, num_prompts, max_new_tokens
        self.every_n_epochs, self.task_options = every_n_epochs, task_options

    def _run(self, pl_module: L.LightningModule) -> dict[str, float]:
        return evaluate_policy(
            pl_module.policy,
            pl_module.tokenizer,
            self.task,
            reference=getattr(pl_module, "reference", None),
            num_prompts=self.num_prompts,
            max_new_tokens=self.max_new_tokens,
            task_options=self.task_options,
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs and not trainer.sanity_checking and epoch % self.every_n_epochs == 0:
            for key, value in self._run(pl_module).items():
                trainer.logger and trainer.logger.log_metrics(
                    {f"eval/{key}": value}, step=trainer.global_step
                )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not _is_causal_lm(pl_module):
            return
        result = self._run(pl_module)
        Path(trainer.default_root_dir).mkdir(parents=True, exist_ok=True)
        (Path(trainer.default_root_dir) / "eval.json").write_text(json.dumps(result, indent=2))
        rank_zero_info("held-out " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()))


def _is_causal_lm(pl_module: L.LightningModule) -> bool:
    policy = getattr(pl_module, "policy", None)
    return (
        policy is not None
        and hasattr(policy, "generate")
        and "CausalLM" in type(unwrap_peft(policy)).__name__
    )


class SampleLogger(L.Callback):
    """After each validation, sample responses to a few validation prompts and log prompt,
    response and reward (the task's reward when ``task`` is set) to the console and to
    ``samples.jsonl`` in the run directory.
    """

    def __init__(
        self, num_samples: int = 4, max_new_tokens: int = 16, task: str | None = None
    ) -> None:
        self.num_samples, self.max_new_tokens, self.task = num_samples, max_new_tokens, task

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not _is_causal_lm(pl_module):
            return
        dataset = trainer.datamodule.val_dataset
        prompts = [dataset[i]["prompt"] for i in range(min(self.num_samples, len(dataset)))]
        ids, mask = left_pad_prompts(pl_module.tokenizer, prompts, pl_module.device)
        rollout = generate(
            pl_module.policy,
            pl_module.tokenizer,
            ids,
            mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=True,
        )
        rewards = (
            task_reward(self.task)(prompts, rollout.responses)
            if self.task
            else [None] * len(prompts)
        )
        path = Path(trainer.default_root_dir) / "samples.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            for p, r, s in zip(prompts, rollout.responses, rewards):
                f.write(
                    json.dumps(
                        {"step": trainer.global_step, "prompt": p, "response": r, "reward": s}
                    )
                    + "\n"
                )
                rank_zero_info(f"[sample step {trainer.global_step}] {p!r} -> {r!r} reward={s}")
