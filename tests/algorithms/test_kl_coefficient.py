"""The online module owns its KL coefficient: fixed or adaptive, updated from the rollout KL,
checkpointed once with the module."""

from __future__ import annotations

import pytest

from lightning_rlhf.algorithms import GRPO
from lightning_rlhf.rl.kl import AdaptiveKLController, FixedKLController
from tests.algorithms.online_helpers import make_module


def test_online_module_owns_adapts_and_checkpoints_the_kl_coefficient(sft_export):
    module = make_module(GRPO, sft_export, kl_beta=0.1, kl_target=5.0, kl_horizon=1000)
    assert isinstance(module.kl_controller, AdaptiveKLController) and module.kl_beta == 0.1
    factor = 1 + 0.2 * 500 / 1000  # KL 10 vs target 5: error clipped to 0.2
    module.kl_controller.update(10.0, 500)
    assert module.kl_beta == pytest.approx(0.1 * factor)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    resumed = GRPO(module.policy_config, reward="x:y", kl_beta=0.1, kl_target=5.0)
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.kl_beta == pytest.approx(0.1 * factor), "the coefficient resumes where it was"
    fixed = make_module(GRPO, sft_export, kl_beta=0.3)
    fixed.kl_controller.update(10.0, 500)
    assert isinstance(fixed.kl_controller, FixedKLController) and fixed.kl_beta == 0.3
