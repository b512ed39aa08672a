"""Reward functions: a Python scorer by spec string, a tiny reward-model export scored back with
its own tokenizer, one-line errors for bad specs and non-finite scores; running moments vs numpy
and reward normalisation."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from lightning_rlhf.data.tasks import arithmetic, get_tokenizer
from lightning_rlhf.models import ModelConfig, export_pretrained, load_reward_model, sequence_scores
from lightning_rlhf.rl.rewards import RunningMoments, load_reward, normalize_rewards
from tests.algorithms.e2e import TINY

PROMPTS = ["12+30=", "7+5=", "99+99="]
RESPONSES = ["42", "13", "1"]


def test_python_scorer_by_spec():
    fn = load_reward("lightning_rlhf.data.tasks.arithmetic:reward")
    scores = fn(PROMPTS, RESPONSES)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    torch.testing.assert_close(scores, torch.tensor(arithmetic.reward(PROMPTS, RESPONSES)))
    assert scores[0] == 1.0 and scores[1] < 1.0


@pytest.fixture
def fake_module(monkeypatch):
    module = types.ModuleType("fake_rewards_for_tests")
    module.nan_reward = lambda prompts, responses: [0.0, float("nan"), 1.0]
    module.short_reward = lambda prompts, responses: [1.0]
    module.not_callable = 3
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


def test_bad_specs_give_one_line_errors(fake_module, tmp_path):
    cases = [
        ("no_colon_at_all", ValueError, "module:function"),
        ("no_such_module_xyz:reward", ImportError, "cannot import module"),
        ("lightning_rlhf.data.tasks.arithmetic:nope", AttributeError, "has no 'nope'"),
        (f"{fake_module}:not_callable", TypeError, "not callable"),
        (str(tmp_path / "missing_dir"), FileNotFoundError, "no such directory"),
        (str(tmp_path), FileNotFoundError, "no config.json"),
        ("", ValueError, "non-empty"),
    ]
    for spec, error, message in cases:
        with pytest.raises(error, match=message) as info:
            load_reward(spec)
        assert "\n" not in str(info.value)


def test_scorer_output_checks(fake_module):
    with pytest.raises(ValueError, match=r"non-finite score nan for sample 1 \(prompt '7\+5='\)"):
        load_reward(f"{fake_module}:nan_reward")(PROMPTS, RESPONSES)
    with pytest.raises(ValueError, match="returned 1 scores for 3 samples"):
        load_reward(f"{fake_module}:short_reward")(PROMPTS, RESPONSES)
    with pytest.raises(ValueError, match="3 prompts but 2 responses"):
        load_reward("lightning_rlhf.data.tasks.arithmetic:reward")(PROMPTS, RESPONSES[:2])


def test_reward_model_export_scored_back(tmp_path):
    tok = get_tokenizer("arithmetic")
    torch.manual_seed(0)
    model = load_reward_model(ModelConfig(config=TINY), tok).eval()
    export = export_pretrained(model, tok, tmp_path / "rm")
    fn = load_reward(str(export), batch_size=2)  # 2 batches, padding inside the first
    scores = fn(PROMPTS, RESPONSES)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    # by hand: BOS + prompt + response + EOS, one sequence at a time (no padding at all)
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        ids = tok(p)["input_ids"] + tok(r, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ids + [tok.eos_token_id]])
        assert ids[0, 0] == tok.bos_token_id
        with torch.no_grad():
            want = sequence_scores(model, ids, torch.ones_like(ids))
        torch.testing.assert_close(scores[i : i + 1], want, rtol=1e-5, atol=1e-5)
    assert scores.unique().numel() == 3  # the head really looks at the text


def test_running_moments_match_numpy():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, generator=g) * 3 + 1 for n in (5, 1, 17, 8)]
    moments = RunningMoments()
    assert moments.std == 1.0  # before two values
    for b in batches:
        moments.update(b)
    seen = torch.cat(batches).double().numpy()
    assert moments.count == seen.size
    assert moments.mean == pytest.approx(seen.mean(), rel=1e-12)
    assert moments.std == pytest.approx(seen.std(ddof=1), rel=1e-12)
    other = RunningMoments()
    other.load_state_dict(moments.state_dict())
    assert (other.count, other.mean, other.std) == (moments.count, moments.mean, moments.std)
    with pytest.raises(ValueError, match="non-finite"):
        moments.update(torch.tensor([1.0, float("inf")]))


def test_normalize_rewards():
    r = torch.tensor([2.0, -4.0, 40.0, 0.0])
    moments = RunningMoments()
    out = normalize_rewards(r, moments, clip=1.5)  # updates first, then divides, then clips
    std = np.std(r.numpy(), ddof=1)
    want = np.clip(r.numpy() / std, -1.5, 1.5)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6)
    centred = normalize_rewards(r, moments, clip=None, scale_only=False, update=False)
    np.testing.assert_allclose(centred.numpy(), (r.numpy() - r.numpy().mean()) / std, rtol=1e-6)
    torch.testing.assert_close(normalize_rewards(r, None, clip=10.0), r.clamp(-10, 10))


def test_a_zero_variance_start_does_not_blow_rewards_up():
    moments = RunningMoments()
    out = normalize_rewards(torch.full((8,), 0.5), moments, clip=None)
    torch.testing.assert_close(out, torch.full((8,), 0.5))  # std 0 -> treated as 1
    out = normalize_rewards(torch.tensor([0.0, 1.0]), moments, clip=None)
    assert moments.std > 1e-3
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0]) / moments.std)
