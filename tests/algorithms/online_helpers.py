"""Helpers of the online-RL tests: a module built outside a trainer, a hand-made rollout, the CLI
arguments of a tiny end-to-end fit, and a trivially learnable scorer (importable by spec string
``tests.algorithms.online_helpers:starts_with_one``: the tests directory is a package, and
pytest puts the repository root on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_rlhf.data.tasks import get_tokenizer
from lightning_rlhf.models import ModelConfig
from lightning_rlhf.rl.buffer import Experience
from lightning_rlhf.rl.rollout import left_pad_prompts

PROMPTS = ["12+34=", "57+48=", "9+9=", "70+25="]
RESPONSES = ["46", "95", "18", "95"]
SCORES = [1.0, 0.25, 1.0, 1.0]


def starts_with_one(prompts: list[str], responses: list[str]) -> list[float]:
    """1.0 for a response whose first character is '1', else 0.0."""
    return [1.0 if r.startswith("1") else 0.0 for r in responses]


def digit_share(prompts: list[str], responses: list[str]) -> list[float]:
    """The share of digits among a response's characters (a dense reward the tiny, barely trained
    SFT model already gets varied values of, so every algorithm has a non-zero gradient)."""
    return [sum(c.isdigit() for c in r) / max(len(r), 1) for r in responses]


def char_code_sum(prompts: list[str], responses: list[str]) -> list[float]:
    """(Sum of the response's character codes mod 10) / 10: it changes with almost any change of
    the response, so even an untrained model's rollouts get varied rewards (with all rewards
    equal, a first rollout has zero advantages under a zero critic head and the policy rightly
    does not move)."""
    return [sum(map(ord, r)) % 10 / 10 for r in responses]


def online_args(sft_export: Path, *extra: str) -> list[str]:
    """CLI arguments of a tiny online fit: 4 prompts a batch, 4 new tokens, whole-batch
    minibatches, two epochs per rollout (one rollout = two optimiser steps), the
    :func:`digit_share` reward."""
    return [
        "--model.init_args.reward",
        "tests.algorithms.online_helpers:digit_share",
        "--model.init_args.policy.name_or_path",
        str(sft_export),
        "--data.batch_size",
        "4",
        "--model.init_args.max_new_tokens",
        "4",
        "--model.init_args.minibatch_size",
        "null",
        "--model.init_args.ppo_epochs",
        "2",
        *extra,
    ]


def make_module(cls, sft_export: Path, **kwargs):
    """An algorithm module on the SFT export, built without a trainer (seeded: two calls with the
    same arguments give the same weights)."""
    kwargs.setdefault("reward", "lightning_rlhf.data.tasks.arithmetic:reward")
    module = cls(ModelConfig(name_or_path=str(sft_export)), **kwargs)
    module.attach_tokenizer(get_tokenizer("arithmetic"))
    torch.manual_seed(0)
    module.configure_model()
    return module


@torch.no_grad()
def hand_made_experience(module, prompts=PROMPTS, responses=RESPONSES, scores=SCORES) -> Experience:
    """A fixed rollout (given responses + EOS, right-padded) with old/ref log-probs taken from the
    module's policy and reference, as ``OnlineRLModule.collect`` would."""
    tok = module.tokenizer
    prompt_ids, prompt_mask = left_pad_prompts(tok, prompts)
    encoded = [
        tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in responses
    ]
    width = max(len(e) for e in encoded)
    response_ids = torch.full((len(encoded), width), tok.pad_token_id)
    mask = torch.zeros(len(encoded), width, dtype=torch.long)
    for i, ids in enumerate(encoded):
        response_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    exp = Experience(
        input_ids=torch.cat([prompt_ids, response_ids], 1),
        attention_mask=torch.cat([prompt_mask, mask], 1),
        prompt_length=prompt_ids.shape[1],
        response_ids=response_ids,
        mask=mask,
        old_logprobs=torch.empty(0),
        ref_logprobs=torch.empty(0),
        scores=torch.tensor(scores),
        group_size=module.group_size,
        extra={"prompts": list(prompts), "responses": list(responses)},
    )
    exp.old_logprobs = module.logprobs(module.policy, exp)
    exp.ref_logprobs = module.reference_logprobs(exp)
    return exp
