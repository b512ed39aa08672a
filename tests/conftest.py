"""Test-wide settings: Triton kernels run in the interpreter on CPU unless told otherwise.

``TRITON_INTERPRET`` must be set before triton is first imported, so it is set here, at the top of
the first file pytest loads. On a GPU machine run ``TRITON_INTERPRET=0 pytest -m gpu`` to test the
compiled kernels.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu``-marked tests where there is no CUDA device (the reason is printed)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="needs a CUDA device (compiled Triton); runs with -m gpu on a GPU"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
