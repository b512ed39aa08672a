"""The rollout buffer of the online algorithms: one batch of experience, reused for a few epochs of
minibatch updates and then dropped (PPO's, and P3O's "short-lived buffer").

Rows are prompt-major groups: row ``g * K + j`` is sample ``j`` of prompt ``g``. Minibatches keep
groups whole, so pairwise (P3O) and group (RLOO, GRPO) quantities stay together.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass
class Experience:
    """One rollout batch of N = G * K sequences (G prompts, K samples each).

    Sequence tensors cover prompt + response, (N, L) with L = P + T; response tensors cover the
    T response positions only, (N, T). Optional fields are filled by the algorithm.

    Attributes:
        input_ids, attention_mask: (N, L) left-padded prompt then right-padded response.
        prompt_length: P, the (padded) prompt width; response position t is sequence column P + t.
        response_ids, mask: (N, T) response tokens and their mask (1 up to and including EOS).
        old_logprobs, ref_logprobs: (N, T) log pi_old(y_t) and log pi_ref(y_t), 0 outside mask.
        scores: (N,) the rewards the algorithm optimises (clipped / normalised as configured).
        group_size: K.
        advantages: (N, T) token advantages or (N,) sequence advantages.
        returns, values: (N, T) GAE returns and rollout-time values (critic algorithms).
        segment_ids: (N, T) macro-action ids (MA-PPO; PPO uses one token per segment).
        live_logprobs, live_entropy: (N, T) the rollout's policy log-probs and entropy with
            their autograd graph, kept by the on-policy shortcut for the update to reuse.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_length: int
    response_ids: torch.Tensor
    mask: torch.Tensor
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    scores: torch.Tensor
    group_size: int = 1
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    values: torch.Tensor | None = None
    segment_ids: torch.Tensor | None = None
    live_logprobs: torch.Tensor | None = None
    live_entropy: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        """N, the number of sequences."""
        return self.input_ids.shape[0]

    @property
    def num_groups(self) -> int:
        """G, the number of prompts."""
        return self.num_rows // self.group_size

    def response_mask_full(self) -> torch.Tensor:
        """(N, L) mask of the response positions in sequence coordinates."""
        full = torch.zeros_like(self.attention_mask)
        full[:, self.prompt_length :] = self.mask
        return full

    def select(self, rows: torch.Tensor) -> Experience:
        """The experience of ``rows`` (a (M,) index of whole groups, in order)."""
        picked = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and value.shape[:1] == (self.num_rows,):
                value = value[rows]
            picked[f.name] = value
        return Experience(**picked)


def minibatch_rows(
    num_groups: int, group_size: int, minibatch_size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Shuffled minibatches of whole groups for one epoch.

    Args:
        num_groups: G prompts; group_size: K samples per prompt.
        minibatch_size: sequences per minibatch (rounded down to whole groups, at least one group).
        generator: the CPU generator of the shuffle (seeded, so a run replays exactly).
    Returns:
        A list of (M,) row indices; together they cover every row once.
    """
    groups_per_batch = max(1, minibatch_size // group_size)
    order = torch.randperm(num_groups, generator=generator)  # (G,)
    offsets = torch.arange(group_size)  # (K,)
    chunks = order.split(groups_per_batch)
    return [(chunk[:, None] * group_size + offsets).reshape(-1) for chunk in chunks]
