"""Session fixtures for the algorithm tests (helpers live in e2e.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.algorithms.e2e import run_fit, tiny_policy


@pytest.fixture(scope="session")
def sft_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SFT policy exported with save_pretrained, the starting point of later algorithms."""
    root = tmp_path_factory.mktemp("sft_base")
    run_fit("sft/arithmetic.yaml", root, *tiny_policy(), steps=6)
    return root / "export"
