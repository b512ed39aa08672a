"""Macro-action segmenters on hand-made sequences (MA-RLHF, losses/README.md §5), the id invariants
every rule keeps, and the MA-PPO n = 1 property: fixed n = 1 + kernels.macro_gae == token GAE."""

from __future__ import annotations

import pytest
import torch

import kernels
from lightning_rlhf.data.tasks import get_tokenizer
from lightning_rlhf.rl.macro_actions import SEGMENTERS, register_segmenter, segment


def _sizes(ids: torch.Tensor) -> list[int]:
    """Macro sizes of one row (padding, id -1, dropped)."""
    return torch.unique_consecutive(ids[ids >= 0], return_counts=True)[1].tolist()


def _pad(x: torch.Tensor, n: int, side: str, fill=0) -> torch.Tensor:
    pad = torch.full((n,), fill, dtype=x.dtype)
    return torch.cat([pad, x]) if side == "left" else torch.cat([x, pad])


def _random_rows(B=5, T=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 60, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        n = int(torch.randint(1, T + 1, (1,), generator=g))
        if b % 2:
            mask[b, T - n :] = 1  # left padding
        else:
            mask[b, :n] = 1  # right padding
    return ids, mask, -torch.rand(B, T, generator=g) * 4


@pytest.mark.parametrize("rule", ["fixed", "randomized", "perplexity", "punctuation"])
def test_ids_are_canonical_and_last_token_is_alone(rule):
    ids, mask, ref = _random_rows()
    options = {"perplexity": {"ref_logprobs": ref}, "punctuation": {"tokenizer": get_tokenizer(
        "arithmetic")}}.get(rule, {})  # fmt: skip
    seg = segment(ids, mask, rule=rule, n=3, **options)
    assert seg.dtype == torch.long
    assert bool((seg[mask == 0] == -1).all())
    for b in range(ids.shape[0]):
        row = seg[b][mask[b].bool()]
        steps = row.diff()
        assert row[0] == 0 and bool(((steps == 0) | (steps == 1)).all())
        assert row.numel() == 1 or row[-1] != row[-2]  # the last valid token is its own macro


@pytest.mark.parametrize("side", ["left", "right"])
def test_fixed_worked_sizes_and_n1(side):
    mask = _pad(torch.ones(12, dtype=torch.long), 3, side)[None]
    ids = torch.arange(15)[None]
    assert _sizes(segment(ids, mask, rule="fixed", n=5)[0]) == [5, 5, 1, 1]
    assert _sizes(segment(ids[:, :14], mask[:, :14] if side == "left" else mask[:, 1:],
                          rule="fixed", n=5)[0]) == [5, 5, 1]  # fmt: skip
    one = segment(ids, mask, rule="fixed", n=1)[0]
    assert one[mask[0].bool()].tolist() == list(range(12))
    with pytest.raises(ValueError, match="n must be"):
        segment(ids, mask, rule="fixed", n=0)


def test_randomized_reproducible_by_seed_and_follows_the_list():
    ids = torch.zeros(3, 100, dtype=torch.long)
    mask = torch.ones(3, 100, dtype=torch.long)
    a = segment(ids, mask, rule="randomized", seed=7, repeats=1)
    assert torch.equal(a, segment(ids, mask, rule="randomized", seed=7, repeats=1))
    assert not torch.equal(a, segment(ids, mask, rule="randomized", seed=8, repeats=1))
    for row in a:
        sizes = _sizes(row)
        assert sorted(sizes[:4]) == [2, 3, 5, 10]  # the shuffled list, used once
        assert sizes[4:] == [100 - 20 - 1, 1]  # then the rest as one macro, then the last token
    assert len({tuple(_sizes(row)) for row in a}) > 1  # each row draws its own order


@pytest.mark.parametrize("side", ["left", "right"])
def test_perplexity_rule_on_a_hand_made_profile(side):
    lp = torch.tensor([-1.0, -1.5, -1.2, -3.0, -0.5, -0.6, -1.0])
    ref = _pad(lp, 2, side, fill=-9.0)[None]
    mask = _pad(torch.ones(7, dtype=torch.long), 2, side)[None]
    ids = torch.zeros_like(mask)
    token = segment(ids, mask, rule="perplexity", ref_logprobs=ref)[0]
    # a new macro where the token's perplexity exceeds the previous token's: t = 1, 3, 5, 6
    assert token[mask[0].bool()].tolist() == [0, 1, 1, 2, 2, 3, 4]
    macro = segment(ids, mask, rule="perplexity", ref_logprobs=ref, compare="macro")[0]
    # ... the current macro's perplexity exp(-mean log p): t = 1 (-1.5 < -1.0), 3 (-3 < -1.35),
    # not 4 (-0.5 > -3) nor 5 (-0.6 > -1.75); t = 6 is the last token
    assert macro[mask[0].bool()].tolist() == [0, 1, 1, 2, 2, 2, 3]
    with pytest.raises(ValueError, match="ref_logprobs"):
        segment(ids, mask, rule="perplexity")


def test_punctuation_with_the_arithmetic_tokenizer():
    tok = get_tokenizer("arithmetic")
    text = "12, 3. ab\ncd"
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
    assert ids.shape[1] == len(text) + 1  # one token per character
    seg = segment(ids, torch.ones_like(ids), rule="punctuation", tokenizer=tok)
    # "12," | " 3." | " ab\n" | "cd" | EOS (the last token alone)
    assert seg[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 4]
    with pytest.raises(ValueError, match="tokenizer"):
        segment(ids, torch.ones_like(ids), rule="punctuation")


def test_parsing_with_a_plugged_in_parser():
    tok = get_tokenizer("arithmetic")
    text = "ab cd efghij"

    def word_parser(s: str) -> list[tuple[int, int]]:
        """Each word and the whole text as constituents (character spans)."""
        spans, start = [(0, len(s))], 0
        for word in s.split(" "):
            spans.append((start, start + len(word)))
            start += len(word) + 1
        return spans

    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
    seg = segment(ids, torch.ones_like(ids), rule="parsing", tokenizer=tok, parser=word_parser)
    # "ab" and "cd" (2 < C = 5 tokens) are macros; "efghij" (6) and the text split into leaves
    assert seg[0].tolist() == [0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_user_registered_rule_ids_or_starts():
    def pairs(response_ids, valid, *, n, **options):
        return valid.long().cumsum(1) // 2  # integer ids: canonicalised by segment()

    def starts_at_zero_token(response_ids, valid, *, n, **options):
        return response_ids == 0  # bool: a new macro starts here

    try:
        register_segmenter("pairs", pairs)
        register_segmenter("zeros", starts_at_zero_token)
        mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1]])
        ids = torch.tensor([[9, 5, 0, 5, 5, 0, 5]])
        assert segment(ids, mask, rule="pairs")[0].tolist() == [-1, 0, 1, 1, 2, 2, 3]
        assert segment(ids, mask, rule="zeros")[0].tolist() == [-1, 0, 1, 1, 1, 2, 3]
    finally:
        SEGMENTERS.pop("pairs", None)
        SEGMENTERS.pop("zeros", None)
    with pytest.raises(ValueError, match="unknown rule 'pairs'"):
        segment(ids, mask, rule="pairs")


def _token_gae(rewards, values, mask, gamma, lam):
    """Textbook token-level GAE, one row at a time over its valid tokens (V after the end = 0)."""
    adv = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        cols = mask[b].nonzero().squeeze(1).tolist()
        running, next_value = 0.0, 0.0
        for t in reversed(cols):
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            running = delta + gamma * lam * running
            adv[b, t], next_value = running, values[b, t]
    return adv, torch.where(mask.bool(), adv + values, 0.0)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8)])
def test_ma_ppo_n1_equals_token_level_gae(gamma, lam):
    ids, mask, _ = _random_rows(B=6, T=31, seed=3)
    g = torch.Generator().manual_seed(4)
    rewards = torch.randn(6, 31, generator=g, dtype=torch.float64)
    values = torch.randn(6, 31, generator=g, dtype=torch.float64)
    seg = segment(ids, mask, rule="fixed", n=1)
    adv, ret = kernels.macro_gae(rewards, values, mask, seg, gamma=gamma, lam=lam)
    want_adv, want_ret = _token_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, want_adv.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ret, want_ret.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
def test_worked_check_through_segment(side):
    """losses/README.md §5: V_t = 0.1 t - 0.3 (t = 1..12), reward 1.7 on the last token, n = 5."""
    t = torch.arange(1, 13, dtype=torch.float32)
    values = _pad(0.1 * t - 0.3, 4, side, fill=7.0)[None]
    rewards = _pad(torch.tensor([0.0] * 11 + [1.7]), 4, side, fill=7.0)[None]
    mask = _pad(torch.ones(12, dtype=torch.long), 4, side)[None]
    seg = segment(torch.zeros_like(mask), mask, rule="fixed", n=5)
    adv, _ = kernels.macro_gae(rewards, values, mask, seg, gamma=1.0, lam=0.95)
    # macro values 0.0, 0.5, 0.8, 0.9; macro rewards 0, 0, 0, 1.7
    a3 = 1.7 - 0.9
    a2 = 0.9 - 0.8 + 0.95 * a3
    a1 = 0.8 - 0.5 + 0.95 * a2
    a0 = 0.5 - 0.0 + 0.95 * a1
    want = torch.tensor([a0] * 5 + [a1] * 5 + [a2, a3])
    torch.testing.assert_close(adv[0, mask[0].bool()], want)
    assert a0 == pytest.approx(1.56115)
