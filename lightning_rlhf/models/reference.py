"""The reference policy pi_ref, one owner for offline (A-LoL, DPO) and online algorithms alike.

Without LoRA the reference is a frozen copy of the initial policy. With LoRA no copy is made: the
policy itself, with its adapter disabled, is the initial policy (the adapter is what training
changes), so the reference costs no memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from lightning_rlhf.models.loading import frozen_copy


def build_reference(policy: nn.Module, *, lora: bool) -> nn.Module | None:
    """The frozen copy of ``policy`` to keep as pi_ref, or None when ``lora`` (adapter off)."""
    return None if lora else frozen_copy(policy)


@contextlib.contextmanager
def reference_model(policy: nn.Module, reference: nn.Module | None) -> Iterator[nn.Module]:
    """pi_ref for the duration of the block: ``reference`` when there is one, else ``policy``
    (a peft model) in eval mode with its adapter disabled, restored afterwards."""
    if reference is not None:
        yield reference
        return
    if not hasattr(policy, "disable_adapter"):
        raise RuntimeError(
            f"reference_model: no reference copy and {type(policy).__name__} has no LoRA adapter "
            "to disable"
        )
    was_training = policy.training
    policy.eval()
    try:
        with policy.disable_adapter():
            yield policy
    finally:
        policy.train(was_training)
