"""Tokenisation (once, in ``setup``, via ``Dataset.map``) and collation into padded batches.

Prompts are tokenised with special tokens and LEFT-truncated; responses without special tokens,
RIGHT-truncated to ``max_response_length - 1`` and closed with EOS. Shapes: B batch, N candidates
(2 for pairs, chosen first), L prompt+response length (right-padded), P prompt length (left-padded).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightning_rlhf.data.formats import DataError, Format, render_chat_prompts

# the text field(s) tokenised as responses, per format
RESPONSE_FIELDS = {
    "prompt": (),
    "response": ("response",),
    "pair": ("chosen", "rejected"),
    "ranked": ("responses",),
}


def tokenize_prompts(
    prompts: list[str],
    tokenizer: Any,
    max_length: int,
    *,
    chat_template: bool = False,
    unknown: set[str] | None = None,
) -> list[list[int]]:
    """Token ids of each prompt, with special tokens, keeping the LAST ``max_length`` tokens.

    With ``chat_template`` the prompt is first rendered by the tokenizer's chat template (which
    already holds the special tokens, so none are added again). Text the tokenizer encodes as its
    unknown token is added to ``unknown`` when given (see :func:`unknown_text`).
    """
    if chat_template:
        prompts = render_chat_prompts(prompts, tokenizer)
    ids = tokenizer(prompts, add_special_tokens=not chat_template)["input_ids"]
    if unknown is not None:
        unknown |= unknown_text(prompts, ids, tokenizer)
    return [list(x[-max_length:]) if max_length > 0 else [] for x in ids]


def tokenize_responses(
    responses: list[str], tokenizer: Any, max_length: int, *, unknown: set[str] | None = None
) -> list[list[int]]:
    """Token ids of each response, no special tokens, the FIRST ``max_length - 1`` kept, then EOS
    (so EOS is always the last token and the total is at most ``max_length``). Unknown text is
    collected in ``unknown`` as by :func:`tokenize_prompts`."""
    if tokenizer.eos_token_id is None:
        raise DataError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no EOS token")
    if max_length < 1:
        raise DataError(f"max_response_length must be >= 1 (room for EOS), got {max_length}")
    ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    if unknown is not None:
        unknown |= unknown_text(responses, ids, tokenizer)
    return [list(x[: max_length - 1]) + [tokenizer.eos_token_id] for x in ids]


def unknown_text(texts: list[str], ids: list[list[int]], tokenizer: Any) -> set[str]:
    """The pieces of ``texts`` (characters, for the built-in tokenizer) that ``tokenizer`` encoded
    as its unknown token in ``ids``; found by the offsets of a fast tokenizer, else ``{"?"}``.
    Empty for a tokenizer without an unknown token (byte-level BPE never needs one)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    found: set[str] = set()
    if unk is None:
        return found
    for text, row in zip(texts, ids):
        if unk not in row:
            continue
        if not getattr(tokenizer, "is_fast", False):
            found.add("?")
            continue
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        found |= {
            text[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if i == unk
        }
    return found


_WARNED_UNKNOWN: weakref.WeakSet = weakref.WeakSet()  # tokenizers already warned about


def warn_unknown_once(tokenizer: Any, unknown: set[str], source: str) -> None:
    """One warning line per tokenizer naming the text it turns into its unknown token (which
    decoding with ``skip_special_tokens`` drops: ``1+7=8;2+6=8`` comes back as ``1+7=82+6=8``)."""
    if not unknown or tokenizer in _WARNED_UNKNOWN:
        return
    _WARNED_UNKNOWN.add(tokenizer)
    names = sorted(unknown)
    shown = ", ".join(repr(c) for c in names[:10])
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    rank_zero_warn(
        f"{source}: the tokenizer has no token for {shown}{more}; they are encoded as "
        f"{tokenizer.unk_token!r}, which decoding drops (add them to the vocabulary or remove them)"
    )


class _Tokenizer:
    """Batched ``Dataset.map`` function adding ``prompt_ids`` and ``response_ids`` columns."""

    def __init__(
        self,
        tokenizer: Any,
        format: Format,
        max_prompt_length: int,
        max_response_length: int,
        chat_template: bool,
        source: str,
    ) -> None:
        self.tok, self.format, self.source = tokenizer, format, source
        self.max_prompt, self.max_response = max_prompt_length, max_response_length
        self.chat_template = chat_template
        self.unknown: set[str] = set()  # text encoded as the unknown token, over every batch

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        """Tokenise one batch of rows; an empty tokenised prompt is an error naming its row."""
        out = {
            "prompt_ids": tokenize_prompts(
                batch["prompt"],
                self.tok,
                self.max_prompt,
                chat_template=self.chat_template,
                unknown=self.unknown,
            )
        }
        for i, (ids, row) in enumerate(zip(out["prompt_ids"], indices)):
            if not ids:
                raise DataError(
                    f"{self.source}: row {row}, column 'prompt': prompt is empty after "
                    f"tokenisation ({batch['prompt'][i]!r})"
                )
        if self.format == "response":
            out["response_ids"] = tokenize_responses(
                batch["response"], self.tok, self.max_response, unknown=self.unknown
            )
        elif self.format in ("pair", "ranked"):
            cands = (
                [[c, r] for c, r in zip(batch["chosen"], batch["rejected"])]
                if self.format == "pair"
                else batch["responses"]
            )
            flat = tokenize_responses(
                [t for c in cands for t in c], self.tok, self.max_response, unknown=self.unknown
            )
            starts = [0]
            for c in cands:
                starts.append(starts[-1] + len(c))
            out["response_ids"] = [flat[a:b] for a, b in zip(starts[:-1], starts[1:])]
        return out


def tokenize_dataset(
    ds: datasets.Dataset,
    tokenizer: Any,
    format: Format,
    *,
    max_prompt_length: int,
    max_response_length: int,
    chat_template: bool = False,
    source: str = "dataset",
) -> datasets.Dataset:
    """Add ``prompt_ids`` (list[int], <= P) and, unless ``format == "prompt"``, ``response_ids``
    (list[int] for "response"; N lists, chosen first, for "pair"/"ranked") to validated rows.
    Characters the tokenizer has no token for are warned about once per tokenizer."""
    fn = _Tokenizer(
        tokenizer, format, max_prompt_length, max_response_length, chat_template, source
    )
    out = ds.map(
        fn,
        batched=True,
        with_indices=True,
        keep_in_memory=True,
        load_from_cache_file=False,
        desc=f"tokenising {source}",
    )
    warn_unknown_once(tokenizer, fn.unknown, source)
    return out


def pad(seqs: list[list[int]], pad_id: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``seqs`` to their longest length on the ``left`` or right.

    Returns ``ids (B, L)`` long and ``mask (B, L)`` long (1 on real tokens).
    """
    length = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        span = slice(length - len(s), length) if left else slice(0, len(s))
        ids[i, span] = torch.tensor(s, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def join_prompt_response(
    prompts: list[list[int]],
    responses: list[list[int]],
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """Concatenate prompt and response ids, right-padded.

    Returns ``input_ids``, ``attention_mask``, ``response_mask`` (each (B, L); the response mask is
    1 on response tokens, EOS included) and ``prompt_lengths`` (B,).
    """
    ids, mask = pad([p + r for p, r in zip(prompts, responses)], pad_id, left=False)
    response_mask = torch.zeros_like(mask)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        response_mask[i, len(p) : len(p) + len(r)] = 1
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "response_mask": response_mask,
        "prompt_lengths": lengths,
    }


@dataclass
class RLHFCollator:
    """Collate tokenised rows (from :func:`tokenize_dataset`, plus an ``index`` column) of one
    format into a batch of tensors; text stays as lists of strings.

    - ``response``: input_ids/attention_mask/response_mask (B, L), prompt_lengths (B,),
      reward (B,) float32 if given, prompt/response list[str], index (B,).
    - ``pair``/``ranked``: the same with a candidate axis, (B, N, L), N = 2 (chosen, rejected) or
      the list length; rewards (B, N) if given; prompt list[str]; responses list[list[str]].
    - ``prompt``: prompt_input_ids/prompt_attention_mask (B, P) left-padded, prompt, index.
    ``with_prompts`` adds the left-padded prompt tensors to every format.
    """

    format: Format
    pad_token_id: int
    with_prompts: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """One batch from a list of rows."""
        prompt_ids = [r["prompt_ids"] for r in rows]
        index = torch.tensor([r["index"] for r in rows], dtype=torch.long)  # (B,)
        batch: dict[str, Any] = {"prompt": [r["prompt"] for r in rows], "index": index}
        if self.format == "prompt" or self.with_prompts:
            ids, mask = pad(prompt_ids, self.pad_token_id, left=True)
            batch.update(prompt_input_ids=ids, prompt_attention_mask=mask)
        if self.format == "response":
            batch.update(
                join_prompt_response(
                    prompt_ids, [r["response_ids"] for r in rows], self.pad_token_id
                )
            )
            batch["response"] = [r["response"] for r in rows]
            if "reward" in rows[0]:
                batch["reward"] = torch.tensor([r["reward"] for r in rows], dtype=torch.float32)
        elif self.format in ("pair", "ranked"):
            batch.update(self.candidates(rows, prompt_ids))
        return batch

    def candidates(self, rows: list[dict[str, Any]], prompt_ids: list[list[int]]) -> dict:
        """The (B, N, L) tensors, (B, N) rewards and response texts of pair/ranked rows."""
        n = len(rows[0]["response_ids"])
        if any(len(r["response_ids"]) != n for r in rows):
            raise DataError(
                f"rows of one batch have different numbers of candidates (index "
                f"{[r['index'] for r in rows]})"
            )
        flat_prompts = [p for p in prompt_ids for _ in range(n)]
        joined = join_prompt_response(
            flat_prompts, [c for r in rows for c in r["response_ids"]], self.pad_token_id
        )
        out: dict[str, Any] = {k: v.view(len(rows), n, *v.shape[1:]) for k, v in joined.items()}
        out["prompt_lengths"] = joined["prompt_lengths"].view(len(rows), n)[:, 0]  # (B,)
        if self.format == "pair":
            out["responses"] = [[r["chosen"], r["rejected"]] for r in rows]
            if "chosen_reward" in rows[0] and "rejected_reward" in rows[0]:
                out["rewards"] = torch.tensor(
                    [[r["chosen_reward"], r["rejected_reward"]] for r in rows], dtype=torch.float32
                )
        else:
            out["responses"] = [list(r["responses"]) for r in rows]
            if "rewards" in rows[0]:
                out["rewards"] = torch.tensor([r["rewards"] for r in rows], dtype=torch.float32)
        return out


def flatten_candidates(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A pair / ranked batch's (B, N, L) ``input_ids``, ``attention_mask`` and
    ``response_mask`` as (B * N, L) rows (candidate-major within each prompt), for one forward
    pass over every candidate; reshape results with ``.view(B, N, ...)``."""
    b, n, length = batch["input_ids"].shape
    keys = ("input_ids", "attention_mask", "response_mask")
    return tuple(batch[k].reshape(b * n, length) for k in keys)
