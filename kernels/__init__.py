"""Fused loss-path ops for RLHF: sequence log-probs, clipped ratio losses, macro-action GAE.

Standalone: imports torch (and triton, lazily, where it is installed), never ``lightning_rlhf``.
Every op takes ``backend="auto" | "triton" | "torch"``; "auto" runs Triton on CUDA tensors and the
memory-lean torch path elsewhere. ``kernels.reference`` holds the fp32 references the tests use.
"""

from kernels._backend import check_choice, check_same_shape
from kernels.logprob import linear_logprobs, sequence_logprobs
from kernels.macro_gae import macro_gae, segment_index
from kernels.ratio import ppo_clip_loss, segment_sum

__all__ = [
    "check_choice",
    "check_same_shape",
    "linear_logprobs",
    "macro_gae",
    "ppo_clip_loss",
    "segment_index",
    "segment_sum",
    "sequence_logprobs",
]
