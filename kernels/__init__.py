"""Fused loss-path ops for RLHF training: sequence log-probs, clipped ratio losses, macro-action GAE.

Standalone: imports torch (and triton, lazily, where it is installed), never ``lightning_rlhf``.
Every op takes ``backend="auto" | "triton" | "torch"``; "auto" runs Triton on CUDA tensors and the
memory-lean torch path elsewhere. ``kernels.reference`` holds the fp32 references the tests use.
"""

from kernels.logprob import linear_logprobs, sequence_logprobs
from kernels.macro_gae import macro_gae
from kernels.ratio import ppo_clip_loss

__all__ = ["linear_logprobs", "macro_gae", "ppo_clip_loss", "sequence_logprobs"]
