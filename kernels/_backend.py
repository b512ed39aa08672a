"""What every op shares: backend selection ("auto" = Triton on CUDA tensors, torch elsewhere) and
argument checks whose messages name the offending argument."""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "torch")


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it is not imported here)."""
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """Return "triton" or "torch" for ``backend`` given the tensors an op will read.

    "auto" chooses Triton when every tensor is on CUDA and Triton is installed, torch otherwise.
    "triton" on CPU tensors is allowed only under ``TRITON_INTERPRET=1`` (the test mode).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' was asked for but triton is not installed")
        if not on_cuda and not _interpreting():
            raise RuntimeError(
                "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (set before triton loads)"
            )
    return backend


def check_same_shape(
    ref_name: str, ref: torch.Tensor, *, dims: int, **others: torch.Tensor
) -> None:
    """One-line ValueError unless ``ref`` has ``dims`` dims and every other tensor its shape."""
    if ref.dim() != dims:
        want = "(B,)" if dims == 1 else "(B, T)"
        raise ValueError(f"{ref_name} must be {want}, got shape {tuple(ref.shape)}")
    for name, t in others.items():
        if t.shape != ref.shape:
            raise ValueError(
                f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}"
            )


def check_choice(name: str, value: str, options: tuple[str, ...]) -> None:
    """Raise a one-line ValueError unless ``value`` is one of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
