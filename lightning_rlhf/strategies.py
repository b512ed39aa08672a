"""Distributed strategies: which algorithm runs under which Lightning strategy, the check that
refuses the rest with a one-line error, and the FSDP2 sharding applied in ``configure_model``.

Support (the README's Scaling section has the table): single device, DDP and FSDP2
(``FSDP2Strategy``, a ``ModelParallelStrategy`` whose data-parallel size is the world size) run
every algorithm (PPO's critic is sharded like the policy, ``shard_value_model``); FSDP1
(``FSDPStrategy``) only the automatic-optimisation ones, since its gradient clipping and
optimizer hooks break under manual optimisation (the online algorithms).

Rollouts under FSDP2 gather the policy once for the whole of ``generate`` (``gathered``) rather
than once per new token; frozen models free their gathered copy after each use (``release``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import (
    DDPStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    Strategy,
)
from torch import nn

from lightning_rlhf.io import commit_directory, temp_directory
from lightning_rlhf.models.loading import unwrap_peft

#: strategy kinds, as named in the support table and in errors
KINDS = ("single", "ddp", "fsdp", "fsdp2")
#: the strategy kinds an algorithm may use, by its optimisation mode
SUPPORT: dict[str, tuple[str, ...]] = {
    "automatic": ("single", "ddp", "fsdp", "fsdp2"),
    "manual": ("single", "ddp", "fsdp2"),
}


class UnsupportedStrategyError(ValueError):
    """An algorithm was given a strategy it cannot run under."""


def strategy_kind(strategy: Strategy) -> str:
    """``single``, ``ddp``, ``fsdp`` (FSDP1) or ``fsdp2`` for a Lightning strategy instance
    (other strategies: their class name)."""
    if isinstance(strategy, ModelParallelStrategy):
        return "fsdp2"
    if isinstance(strategy, FSDPStrategy):
        return "fsdp"
    if isinstance(strategy, DDPStrategy):
        return "ddp"
    if isinstance(strategy, SingleDeviceStrategy):
        return "single"
    return type(strategy).__name__


def supported_kinds(module: nn.Module) -> tuple[str, ...]:
    """The strategy kinds ``module`` (an ``RLHFModule``) supports: by its optimisation mode."""
    manual = not getattr(module, "automatic_optimization", True)
    return SUPPORT["manual" if manual else "automatic"]


def check_strategy(module: nn.Module, strategy: Strategy) -> None:
    """Raise :class:`UnsupportedStrategyError` when ``module`` cannot run under ``strategy``."""
    kind = strategy_kind(strategy)
    allowed = supported_kinds(module)
    if kind not in allowed:
        why = " (FSDP1 breaks with manual optimisation)" if kind == "fsdp" else ""
        raise UnsupportedStrategyError(
            f"{type(module).__name__} cannot run under trainer.strategy="
            f"{type(strategy).__name__}{why}; supported: {', '.join(allowed)} "
            "(e.g. --config configs/trainer/fsdp2.yaml)"
        )


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (an FSDP2 parameter or gradient shard), or the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` for pure data parallelism with FSDP2: the data-parallel size is
    the world size (all nodes x devices) and the tensor-parallel size 1, unless given.

    ``offload_frozen``: the frozen models (reference policy, reward model) keep their shards in
    CPU memory and are all-gathered to the device layer by layer for each use (FSDP2's
    ``CPUOffloadPolicy``): their device memory drops to about one layer, at the cost of a
    host-to-device copy of the whole model per forward pass. Trained models (policy, critic)
    always stay on the device."""

    def __init__(
        self,
        data_parallel_size: int | None = None,
        tensor_parallel_size: int = 1,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        offload_frozen: bool = False,
    ) -> None:
        super().__init__(
            data_parallel_size="auto" if data_parallel_size is None else data_parallel_size,
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )
        self._fsdp2_data_parallel = data_parallel_size
        #: keep the frozen models' shards (reference policy, reward model) in CPU memory
        self.offload_frozen = offload_frozen

    def setup_environment(self) -> None:
        if self._fsdp2_data_parallel is None:  # resolved once the world size is known
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None
    ) -> None:
        """A distributed checkpoint folder is written by every rank into a temporary sibling
        folder, then swapped in by rank 0 once all ranks are done (``io.commit_directory``): an
        interrupted save never leaves a mixed or partial ``last.ckpt`` (Lightning's own save
        bypasses the CheckpointIO plug-in here). Single files go through the plug-in."""
        if not self._save_distributed_checkpoint or storage_options is not None:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        tmp = Path(self.broadcast(str(temp_directory(path)) if self.global_rank == 0 else ""))
        super().save_checkpoint(checkpoint, tmp)
        self.barrier("fsdp2_checkpoint_written")
        if self.global_rank == 0:
            commit_directory(tmp, path)
        self.barrier("fsdp2_checkpoint_committed")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a Hugging Face causal LM (peft wrappers unwrapped)."""
    base = unwrap_peft(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    layers = getattr(decoder, "layers", None) or getattr(decoder, "h", None)
    if layers is None:
        raise ValueError(f"FSDP2: cannot find the decoder layers of {type(base).__name__}")
    return list(layers)


def _offload(offload: bool) -> dict[str, Any]:
    """``fully_shard`` keywords of FSDP2's CPU offload policy (parameters kept on the CPU,
    all-gathered to the device for each use), or none."""
    if not offload:
        return {}
    from torch.distributed.fsdp import CPUOffloadPolicy

    return {"offload_policy": CPUOffloadPolicy(pin_memory=torch.cuda.is_available())}


def shard_causal_lm(model: nn.Module, mesh: Any, offload: bool = False) -> nn.Module:
    """Apply FSDP2 ``fully_shard`` to each decoder layer and to the whole model (the root unit:
    embeddings, final norm, lm_head) over ``mesh`` (1-D data-parallel mesh); ``offload`` keeps
    the shards in CPU memory (frozen models only: an optimiser would step on the CPU).

    ``models.response_logprobs`` calls the decoder directly and reads ``lm_head.weight`` outside
    the root's forward, so a pre-forward hook on the decoder unshards the root first; the root
    stays unsharded until its post-backward (FSDP2 never reshards the root after forward), and an
    optimizer step-post hook (:func:`reshard_after_step`) reshards it so no stale copy survives.
    """
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, **_offload(offload))
    fully_shard(model, mesh=mesh, **_offload(offload))
    base = unwrap_peft(model)
    base.get_decoder().register_forward_pre_hook(lambda *_: _unshard_root(model))
    return model


def shard_value_model(critic: nn.Module, mesh: Any) -> nn.Module:
    """FSDP2 for PPO's critic (``models.critic.ValueModel``): ``fully_shard`` on each block of its
    backbone and on the whole critic (the root unit: embeddings, final norm, value head). Its
    forward runs inside the root's, so FSDP2's own hooks gather and free the weights, and its
    gradients are reduce-scattered over ``mesh`` like the policy's."""
    from torch.distributed.fsdp import fully_shard

    backbone = critic.backbone
    layers = getattr(backbone, "layers", None) or getattr(backbone, "h", None)
    if layers is None:
        raise ValueError(f"FSDP2: cannot find the blocks of the critic's {type(backbone).__name__}")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(critic, mesh=mesh)
    return critic


def release(model: nn.Module) -> None:
    """Free every gathered copy of a sharded frozen ``model`` (its root stays gathered after a
    forward otherwise; a no-op for unsharded models)."""
    for unit in fsdp_units(model):
        unit.reshard()


def fsdp_units(module: nn.Module) -> list[nn.Module]:
    """The FSDP2 units (``FSDPModule`` instances) inside ``module``, outermost first; empty when
    ``module`` is not sharded."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextmanager
def gathered(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Hold a full copy of a sharded ``model``'s weights on every rank for the duration (one
    all-gather per FSDP2 unit, whatever the number of forward passes inside), then free it.

    ``generate`` runs one forward per new token; with FSDP2's default every decoder layer is
    gathered again for each of them, so a rollout of T tokens moves the model T times. Inside
    this context it moves it once, at the cost of one full (unsharded) copy per rank while it
    lasts. ``enabled=False`` (or an unsharded model) leaves FSDP2's per-layer gathering alone.
    """
    units = fsdp_units(model) if enabled else []
    if not units:
        yield
        return
    units[0]._get_fsdp_state()._lazy_init()  # the root is known before any unit is touched
    inner = units[1:]  # the root keeps FSDP2's own rule (never resharded after forward)
    for unit in inner:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        handles = [unit.unshard(async_op=True) for unit in units]
        for handle in handles:
            if handle is not None:
                handle.wait()
        yield
    finally:
        for unit in inner:
            unit.set_reshard_after_forward(True, recurse=False)
        for unit in units:
            unit.reshard()


def _unshard_root(root: nn.Module) -> None:
    """All-gather the root unit's parameters (a no-op when they are already unsharded)."""
    state = root._get_fsdp_state()
    state._lazy_init()  # make ``root`` the FSDP root before any layer runs forward
    root.unshard()


def reshard_after_step(optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
    """Reshard every FSDP2 unit of ``module`` after each ``optimizer.step`` (an unsharded copy
    left by a no-grad forward would otherwise be stale after the update). Idempotent: installs the
    hook once per optimizer."""
    from torch.distributed.fsdp import FSDPModule

    if getattr(optimizer, "_reshard_hook_installed", False):
        return
    optimizer._reshard_hook_installed = True
    units = [m for m in module.modules() if isinstance(m, FSDPModule)]

    def hook(*_: Any) -> None:
        for unit in units:
            unit.reshard()

    if units:
        optimizer.register_step_post_hook(hook)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded, CPU) state dict of ``module``: gathered from the FSDP2 shards (a
    collective: every rank must call it; rank 0 gets the tensors) or plainly without FSDP2.
    Pass it to ``save_pretrained(..., state_dict=...)`` to export a sharded policy."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    if not any(isinstance(m, FSDPModule) for m in module.modules()):
        return module.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options)
