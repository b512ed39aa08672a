"""fp32 PyTorch references of every op in ``kernels``: simple, obviously right, slow.

Tests and benchmarks compare the Triton kernels and the torch backends against these. This module
never imports triton.
"""

from __future__ import annotations

import torch

# --- log-probs (sequence_logprobs, linear_logprobs) ------------------------------------------

# --- ratio losses (ppo_clip_loss, A-LoL weights, P3O) and macro-action GAE ------------------
