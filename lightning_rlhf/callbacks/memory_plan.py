"""The memory plan printed at start-up (rank 0, one table): bytes of parameters, gradients and
optimiser state that each rank holds for the policy, the critic, the reference policy and the
reward model under the chosen strategy, read from the real tensors once the models are built
(and sharded) and the optimiser exists, before the first step can run out of memory.

What is counted, per rank: parameters as stored (an FSDP2 shard: this rank's part; DDP: the
whole model); gradients of the trainable parameters, in their dtype; optimiser state from the
optimiser's kind (Adam/AdamW: two moments per trained value, SGD with momentum: one) in the
parameters' dtype, allocated at the first step. Not counted: activations, the rollout's KV cache,
and, with ``rollout_gather="once"``, the full policy copy a rollout gathers (its own row).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_rlhf.rl.rewards import reward_models
from lightning_rlhf.strategies import fsdp_units, local_shard, strategy_kind

#: the model attributes an algorithm may hold, in table order
MODELS = ("policy", "critic", "reference", "value_head")


@dataclass
class MemoryRow:
    """One model's bytes on this rank."""

    model: str
    params: int
    grads: int
    optimizer: int
    where: str  # the devices holding it ("cpu", "cuda"), ", sharded" under FSDP2


def _nbytes(tensor: torch.Tensor) -> int:
    local = local_shard(tensor)
    return local.numel() * local.element_size()


def optimizer_states(optimizer: torch.optim.Optimizer | None) -> int:
    """Optimiser state tensors per trained parameter: 2 for Adam-family optimisers, 1 for SGD
    with momentum (or RMSprop), 0 without momentum; 2 for unknown kinds (the usual worst case)."""
    if optimizer is None:
        return 0
    name = type(optimizer).__name__.lower()
    if "adam" in name:
        return 2
    if name == "sgd":
        return 1 if any(g.get("momentum", 0) for g in optimizer.param_groups) else 0
    return 1 if name == "rmsprop" else 2


def model_row(
    name: str, model: nn.Module, optimizer: torch.optim.Optimizer | None, states: int
) -> MemoryRow:
    """The bytes ``model`` holds on this rank (gradients and optimiser state only for the
    parameters ``optimizer`` trains)."""
    trained = {id(p) for g in (optimizer.param_groups if optimizer else []) for p in g["params"]}
    params = list(model.parameters())
    train = [p for p in params if id(p) in trained]
    grads = sum(_nbytes(p) for p in train)
    devices = {local_shard(p).device.type for p in params}
    sharded = bool(fsdp_units(model))
    where = "/".join(sorted(devices)) + (", sharded" if sharded else "")
    return MemoryRow(name, sum(_nbytes(p) for p in params), grads, states * grads, where)


def memory_plan(module: nn.Module, optimizer: torch.optim.Optimizer | None) -> list[MemoryRow]:
    """The rows of every model ``module`` (an ``RLHFModule``) holds, then reward models, then
    the rollout's gathered copy of the policy when it gathers once under FSDP2."""
    states = optimizer_states(optimizer)
    rows = []
    for name in MODELS:
        model = getattr(module, name, None)
        if isinstance(model, nn.Module):
            rows.append(model_row(name, model, optimizer, states))
    reward_fn = getattr(module, "_reward_fn", None)
    for i, model in enumerate(reward_models(reward_fn) if reward_fn is not None else []):
        rows.append(model_row("reward" if i == 0 else f"reward{i}", model, None, 0))
    gather = getattr(getattr(module, "hparams", {}), "get", lambda *_: None)("rollout_gather")
    policy = getattr(module, "policy", None)
    if gather == "once" and policy is not None and fsdp_units(policy):
        full = sum(p.numel() * local_shard(p).element_size() for p in policy.parameters())
        rows.append(MemoryRow("rollout copy", full, 0, 0, "during generate only"))
    return rows


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_plan(rows: list[MemoryRow], header: str) -> str:
    """The table: one line per model, a total line, sizes in binary units with exact bytes of
    the total."""
    lines = [header, f"{'model':<14}{'params':>12}{'grads':>12}{'optimizer':>12}  where"]
    for r in rows:
        sizes = "".join(f"{_size(v):>12}" for v in (r.params, r.grads, r.optimizer))
        lines.append(f"{r.model:<14}{sizes}  {r.where}")
    steady = [r for r in rows if r.model != "rollout copy"]
    total = sum(r.params + r.grads + r.optimizer for r in steady)
    lines.append(f"{'total':<14}{_size(total):>12}  ({total} bytes; + activations, KV cache)")
    return "\n".join(lines)


class MemoryPlan(L.Callback):
    """Print the memory plan once, on rank 0, when training starts (models built and sharded,
    optimiser created, nothing allocated by a step yet). The reward model is loaded here if the
    algorithm has one, so its bytes are in the plan and a bad reward spec fails before step 1."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        hparams = getattr(pl_module, "hparams", {})
        if hasattr(type(pl_module), "reward_fn") and hparams.get("reward"):
            pl_module.reward_fn  # noqa: B018 - load (and under FSDP2 shard) it now
        optimizers = trainer.optimizers
        rows = memory_plan(pl_module, optimizers[0] if optimizers else None)
        kind = strategy_kind(trainer.strategy)
        header = f"memory plan per rank ({kind}, {trainer.world_size} process(es)):"
        rank_zero_info(format_plan(rows, header))
