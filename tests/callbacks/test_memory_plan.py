"""The start-up memory plan: bytes per rank from the real tensors, hand-counted here on a tiny
PPO (policy, critic, reference) with AdamW; the FSDP2 halving is checked in
tests/distributed/test_fsdp2.py."""

from __future__ import annotations

import torch

from lightning_rlhf.algorithms.ppo import PPO
from lightning_rlhf.callbacks.memory_plan import format_plan, memory_plan, optimizer_states
from lightning_rlhf.data.tasks.arithmetic import build_tokenizer
from lightning_rlhf.models import ModelConfig
from tests.algorithms.e2e import TINY


def _ppo() -> PPO:
    module = PPO(ModelConfig(config=TINY), reward="tests.algorithms.online_helpers:digit_share")
    module.attach_tokenizer(build_tokenizer())
    module.configure_model()
    return module


def test_rows_count_params_grads_and_adam_moments_of_what_the_optimiser_trains():
    module = _ppo()
    groups = module.trainable_groups()
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    rows = {r.model: r for r in memory_plan(module, optimizer)}
    assert list(rows) == ["policy", "critic", "reference"]  # a Python scorer: no reward row
    policy = sum(p.numel() for p in module.policy.parameters()) * 4  # fp32
    critic = sum(p.numel() for p in module.critic.parameters()) * 4
    assert (rows["policy"].params, rows["policy"].grads) == (policy, policy)
    assert rows["policy"].optimizer == 2 * policy  # exp_avg + exp_avg_sq
    assert (rows["critic"].params, rows["critic"].optimizer) == (critic, 2 * critic)
    assert (rows["reference"].params, rows["reference"].grads) == (policy, 0)
    assert rows["reference"].optimizer == 0 and rows["policy"].where == "cpu"
    table = format_plan(list(rows.values()), "plan:")
    total = 4 * policy + 4 * critic + policy  # params + grads + 2 moments; the frozen copy
    assert table.splitlines()[-1].endswith(f"({total} bytes; + activations, KV cache)")
    assert len(table.splitlines()) == 2 + 3 + 1  # header, columns, 3 models, total


def test_optimizer_kinds():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert optimizer_states(torch.optim.Adam(p)) == 2
    assert optimizer_states(torch.optim.SGD(p, lr=0.1)) == 0
    assert optimizer_states(torch.optim.SGD(p, lr=0.1, momentum=0.9)) == 1
    assert optimizer_states(None) == 0
