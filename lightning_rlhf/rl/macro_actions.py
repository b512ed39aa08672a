"""Macro-action segmenters for MA-PPO (Chai et al., "MA-RLHF", ICLR 2025; losses/README.md §5).

A segmenter cuts each response into runs of consecutive tokens (macro actions); ``segment``
returns their ids for ``kernels.macro_gae`` / ``kernels.ppo_clip_loss(ratio_level="segment")``.
Rules: fixed n-grams, randomized lengths, perplexity, punctuation (a parser-free stand-in for
parsing), parsing (a pluggable parser), plus any rule added with :func:`register_segmenter`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

import kernels

PAD_SEGMENT_ID = -1
"""Segment id of masked (padding) positions; ``kernels.macro_gae`` ignores them anyway."""

PUNCTUATION = (",", ".", ";", ":", "!", "?", "\n")
"""A token whose text ends in one of these ends a macro action (rule "punctuation")."""

Segmenter = Callable[..., torch.Tensor]
"""fn(response_ids (B, T), mask (B, T) bool, *, n, **options) -> (B, T): either bool "a new
macro action starts here" or integer ids (contiguous runs of equal ids over valid tokens)."""


def register_segmenter(name: str, fn: Segmenter) -> None:
    """Make ``segment(..., rule=name)`` call ``fn`` (see :data:`Segmenter`); replaces a rule."""
    if not callable(fn):
        raise TypeError(f"register_segmenter: {name!r} needs a callable, got {type(fn).__name__}")
    SEGMENTERS[name] = fn


def valid_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the valid tokens of its row: (B, T) long, -1 where masked."""
    valid = mask.bool()
    return torch.where(valid, valid.long().cumsum(dim=1) - 1, -1)


def _previous_valid(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x at the previous valid token of each position, and whether there is one: (B, T) each."""
    B, T = valid.shape
    pos = torch.arange(T, device=valid.device).expand(B, T)  # (B, T)
    last = torch.where(valid, pos, -1).cummax(dim=1).values  # (B, T) last valid index <= t
    prev = torch.cat([last.new_full((B, 1), -1), last[:, :-1]], dim=1)  # (B, T)
    return x.gather(1, prev.clamp(min=0)), prev >= 0


def segment(
    response_ids: torch.Tensor, mask: torch.Tensor, *, rule: str = "fixed", n: int = 5, **options
) -> torch.Tensor:
    """Macro-action ids of every response token.

    Always: the last valid token of a row is a macro action on its own (it carries the reward);
    ids start at 0 on each row's first valid token and grow by one per macro action along the
    valid tokens; masked positions get ``PAD_SEGMENT_ID`` (-1). Left or right padding.

    Args:
        response_ids: (B, T) tokens; mask: (B, T) nonzero at valid response tokens.
        rule: "fixed" | "randomized" | "perplexity" | "punctuation" | "parsing" | a registered
            name. n: the n-gram length of "fixed" (n = 1: one token per macro = token-level PPO).
        options: the rule's own (``seed``, ``lengths``, ``repeats``; ``ref_logprobs``;
            ``tokenizer``; ``parser``, ``cutoff``), see each ``segment_<rule>``.
    Returns:
        (B, T) long segment ids.
    """
    if response_ids.dim() != 2 or mask.shape != response_ids.shape:
        raise ValueError(f"segment: response_ids and mask must both be (B, T), got "
                         f"{tuple(response_ids.shape)} and {tuple(mask.shape)}")  # fmt: skip
    if rule not in SEGMENTERS:
        raise ValueError(f"segment: unknown rule {rule!r}; known: {', '.join(sorted(SEGMENTERS))}")
    valid = mask.bool()
    out = SEGMENTERS[rule](response_ids, valid, n=n, **options)
    if out.shape != valid.shape:
        raise ValueError(f"segment: rule {rule!r} returned shape {tuple(out.shape)}, "
                         f"expected {tuple(valid.shape)}")  # fmt: skip
    starts = out.bool() if out.dtype == torch.bool else kernels.segment_index(out, valid)[1]
    return _ids_from_starts(starts, valid)


def _ids_from_starts(starts: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Canonical ids from "a macro starts here" flags, the first and last valid token forced."""
    index = valid_index(valid)
    n_valid = valid.sum(dim=1, keepdim=True)  # (B, 1)
    forced = (index == 0) | (index == n_valid - 1)  # first token; the last token alone
    starts = valid & (starts | forced)
    return torch.where(valid, starts.long().cumsum(dim=1) - 1, PAD_SEGMENT_ID)


def segment_fixed(response_ids: torch.Tensor, valid: torch.Tensor, *, n: int = 5) -> torch.Tensor:
    """Consecutive n-grams of valid tokens (the paper's default n = 5; 10 for code)."""
    if n < 1:
        raise ValueError(f"segment(rule='fixed'): n must be >= 1, got {n}")
    return valid & (valid_index(valid) % n == 0)


def segment_randomized(
    response_ids: torch.Tensor,
    valid: torch.Tensor,
    *,
    n: int = 5,
    seed: int = 0,
    lengths: Sequence[int] = (2, 3, 5, 10),
    repeats: int = 3,
) -> torch.Tensor:
    """Macro lengths drawn from ``lengths`` repeated ``repeats`` times, shuffled per row.

    Rows are shuffled in order by one ``random.Random(seed)`` (reproducible; pass e.g. the
    step as ``seed`` to vary them between rollouts). Once the list is used up, the rest of the
    response is one macro action. ``n`` is ignored.
    """
    if not lengths or min(lengths) < 1 or repeats < 1:
        raise ValueError(f"segment(rule='randomized'): need lengths >= 1 and repeats >= 1, got "
                         f"{list(lengths)} x {repeats}")  # fmt: skip
    rng = random.Random(seed)
    T = valid.shape[1]
    starts = torch.zeros(valid.shape, dtype=torch.bool)  # (B, T) over valid-token positions
    for row in range(valid.shape[0]):
        order = list(lengths) * repeats
        rng.shuffle(order)
        cuts = torch.tensor(order).cumsum(0)
        starts[row, 0] = True
        starts[row, cuts[cuts < T]] = True
    index = valid_index(valid).clamp(min=0)
    return valid & starts.to(valid.device).gather(1, index)


def segment_perplexity(
    response_ids: torch.Tensor,
    valid: torch.Tensor,
    *,
    n: int = 5,
    ref_logprobs: torch.Tensor | None = None,
    compare: str = "token",
) -> torch.Tensor:
    """A macro action ends where the next token would raise the reference perplexity.

    ``compare="token"``: token t starts a new macro when its perplexity exp(-log pi_ref(y_t))
    exceeds the previous token's. ``compare="macro"``: when it exceeds the perplexity of the
    macro action so far, exp(-mean log pi_ref over its tokens). ``n`` is ignored.

    Args:
        ref_logprobs: (B, T) log pi_ref(y_t) of the response tokens (required).
    """
    if ref_logprobs is None or ref_logprobs.shape != valid.shape:
        raise ValueError("segment(rule='perplexity') needs ref_logprobs of shape (B, T)")
    lp = ref_logprobs.detach().float()
    if compare == "token":
        prev, has_prev = _previous_valid(lp, valid)
        return valid & has_prev & (lp < prev)  # lower log-prob = higher perplexity
    if compare != "macro":
        raise ValueError(f"segment(rule='perplexity'): compare must be 'token' or 'macro', "
                         f"got {compare!r}")  # fmt: skip
    return _perplexity_macro_starts(lp, valid)


def _perplexity_macro_starts(lp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Sequential scan: start a macro where log p(y_t) < the running mean of the current macro."""
    B, T = lp.shape
    starts = torch.zeros_like(valid)
    total = lp.new_zeros(B)  # sum of log-probs in the current macro
    count = lp.new_zeros(B)  # its number of tokens
    for t in range(T):
        v = valid[:, t]
        new = v & ((count == 0) | (lp[:, t] < total / count.clamp(min=1)))
        starts[:, t] = new
        total = torch.where(new, lp[:, t], torch.where(v, total + lp[:, t], total))
        count = torch.where(new, 1.0, torch.where(v, count + 1, count))
    return starts


def _token_texts(tokenizer, ids: torch.Tensor) -> dict[int, str]:
    """Decoded text of each distinct id in ``ids``."""
    return {i: tokenizer.decode([i]) for i in ids.unique().tolist()}


def segment_punctuation(
    response_ids: torch.Tensor,
    valid: torch.Tensor,
    *,
    n: int = 5,
    tokenizer=None,
    punctuation: Sequence[str] = PUNCTUATION,
) -> torch.Tensor:
    """Split after every token whose text ends in , . ; : ! ? or a newline (parser-free).

    Args:
        tokenizer: decodes single tokens (required). ``n`` is ignored.
    """
    if tokenizer is None:
        raise ValueError("segment(rule='punctuation') needs tokenizer=")
    texts = _token_texts(tokenizer, response_ids[valid])
    ends = tuple(punctuation)
    table = torch.zeros(max(texts, default=0) + 1, dtype=torch.bool)  # id -> ends a macro
    for i, text in texts.items():
        table[i] = text.endswith(ends)
    ids = response_ids.clamp(min=0, max=table.numel() - 1).cpu()
    is_end = valid & table[ids].to(valid.device)  # (B, T)
    prev_end, has_prev = _previous_valid(is_end, valid)
    return valid & has_prev & prev_end


def segment_parsing(
    response_ids: torch.Tensor,
    valid: torch.Tensor,
    *,
    n: int = 5,
    tokenizer=None,
    parser: Callable[[str], list[tuple[int, int]]] | None = None,
    cutoff: int = 5,
) -> torch.Tensor:
    """Constituents shorter than ``cutoff`` tokens are macro actions (MA-RLHF "parsing").

    ``parser(text)`` returns constituent spans as (start, end) character offsets (end
    exclusive) into the response text, which is the concatenation of the decoded tokens.
    Maximal spans covering fewer than ``cutoff`` tokens are taken left to right without
    overlap; every token outside them is a macro action of its own (a leaf). ``n`` is ignored.
    """
    if tokenizer is None or parser is None:
        raise ValueError("segment(rule='parsing') needs tokenizer= and parser=")
    starts = valid.clone()  # every token its own macro unless inside a taken span
    for row in range(valid.shape[0]):
        cols = valid[row].nonzero().squeeze(1).tolist()
        pieces = [tokenizer.decode([i]) for i in response_ids[row, cols].tolist()]
        offsets = torch.tensor([0] + [len(p) for p in pieces]).cumsum(0).tolist()
        for first, last in _token_spans(parser("".join(pieces)), offsets, cutoff):
            for j in range(first + 1, last + 1):
                starts[row, cols[j]] = False
    return starts


def _token_spans(spans, offsets: list[int], cutoff: int) -> list[tuple[int, int]]:
    """Char spans -> maximal, non-overlapping (first, last) token spans of < ``cutoff`` tokens."""
    n_tokens = len(offsets) - 1
    token_spans = set()
    for start, end in spans:
        tokens = [j for j in range(n_tokens) if offsets[j] < end and offsets[j + 1] > start]
        if 1 < len(tokens) < cutoff:
            token_spans.add((tokens[0], tokens[-1]))
    taken, free_from = [], 0
    for first, last in sorted(token_spans, key=lambda s: (s[0], -s[1])):
        if first >= free_from:
            taken.append((first, last))
            free_from = last + 1
    return taken


SEGMENTERS: dict[str, Segmenter] = {
    "fixed": segment_fixed,
    "randomized": segment_randomized,
    "perplexity": segment_perplexity,
    "punctuation": segment_punctuation,
    "parsing": segment_parsing,
}
"""Rule name -> segmenter; :func:`register_segmenter` adds to it."""
