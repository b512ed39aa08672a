"""The upstream warnings a run does not need to see, silenced in one place by message, category
and module (never a blanket ignore): each entry of :data:`UPSTREAM_NOISE` says why it is noise.
The CLI installs them (:func:`silence_upstream_noise`); warnings whose cause is ours are fixed
where they arise instead."""

from __future__ import annotations

import warnings
from typing import NamedTuple

from lightning.fabric.utilities.warnings import PossibleUserWarning


class Noise(NamedTuple):
    """One silenced warning: a regex matched at the start of the message, its category, a regex
    of the module it is attributed to, and why it is noise here."""

    message: str
    category: type[Warning]
    module: str
    why: str


UPSTREAM_NOISE: tuple[Noise, ...] = (
    Noise(
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        r"lightning\.pytorch\.utilities\._pytree",
        "torch deprecates a class Lightning's own pytree helper still checks; nothing to change "
        "on our side",
    ),
    Noise(
        r"Using ModelCheckpoint with manual optimization and every_n_train_steps",
        UserWarning,
        r"lightning\.pytorch\.callbacks\.model_checkpoint",
        "a 15-line note about saving the pre-step state; our manual-optimisation steps save "
        "the post-step state on purpose (global_step counts the finished steps, exact resume "
        "is tested)",
    ),
    Noise(
        r"Found \d+ module\(s\) in eval mode at the start of training",
        PossibleUserWarning,
        r"lightning\.pytorch\.loops\.fit_loop",
        "frozen reference / reward models (and the whole network of on-policy RL) are in eval "
        "mode on purpose; RLHFModule.on_train_start checks the modules that should not be",
    ),
    Noise(
        r"`is_gradient_checkpointing` is deprecated",
        FutureWarning,
        r"transformers\.modeling_utils",
        "peft reads the property transformers renamed (is_activation_checkpointing); our code "
        "does not use it",
    ),
    Noise(
        r"LightningCLI's args parameter is intended to run from within Python",
        UserWarning,
        r"lightning\.pytorch\.cli",
        "the demo builds each stage's CLI from a list of arguments while sys.argv holds the "
        "demo's own; the list is the whole configuration",
    ),
)


def silence_upstream_noise() -> None:
    """Install a precise ``ignore`` filter for each entry of :data:`UPSTREAM_NOISE` (idempotent:
    ``warnings.filterwarnings`` does not add a filter twice)."""
    for noise in UPSTREAM_NOISE:
        warnings.filterwarnings(
            "ignore", message=noise.message, category=noise.category, module=noise.module
        )
