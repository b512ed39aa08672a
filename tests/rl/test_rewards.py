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
from lightning_rlhf.models import (
    ModelConfig,
    export_pretrained,
    load_causal_lm,
    load_reward_model,
    sequence_scores,
)
from lightning_rlhf.models.loading import UntrainedWeightsError
from lightning_rlhf.rl.rewards import (
    RewardError,
    RunningMoments,
    WeightedReward,
    load_reward,
    load_rewards,
    normalize_rewards,
    reward_names,
)
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
def fake_module(monkeypatch, tmp_path):
    module = types.ModuleType("fake_rewards_for_tests")
    module.nan_reward = lambda prompts, responses: [0.0, float("nan"), 1.0]
    module.short_reward = lambda prompts, responses: [1.0]
    module.none_reward = lambda prompts, responses: None
    module.text_reward = lambda prompts, responses: ["1.0", "0.5", "0"]
    module.dict_reward = lambda prompts, responses: {"score": [1.0, 0.0, 1.0]}
    module.bool_reward = lambda prompts, responses: [True, False, True]
    module.str_reward = lambda prompts, responses: "good"
    module.failing_reward = lambda prompts, responses: 1 / 0
    module.one_argument = lambda prompts: [1.0] * len(prompts)
    module.array_reward = lambda prompts, responses: np.array([0.5, 1, 2], dtype=np.float64)
    module.tensor_list = lambda prompts, responses: [torch.tensor(1.0)] * len(prompts)
    module.not_callable = 3
    module.length_reward = lambda prompts, responses: [float(len(r)) for r in responses]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    (tmp_path / "broken_rewards_for_tests.py").write_text("def reward(p, r):\n    return [\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return module.__name__


def test_bad_specs_give_one_line_errors(fake_module, tmp_path):
    cases = [
        ("no_colon_at_all", "expected 'module:function' or a directory"),
        ("no_such_module_xyz:reward", "cannot import module 'no_such_module_xyz'"),
        ("broken_rewards_for_tests:reward", "cannot import module 'broken_rewards_for_tests': "),
        ("lightning_rlhf.data.tasks.arithmetic:nope", "has no 'nope'"),
        (f"{fake_module}:not_callable", "'not_callable' is a int, not a callable"),
        ("", "non-empty"),
    ]
    for spec, message in cases:
        with pytest.raises(RewardError) as info:
            load_reward(spec)
        assert message in str(info.value) and "\n" not in str(info.value)
        assert spec in str(info.value)
    for spec, message in [
        (str(tmp_path / "missing_dir"), "no such directory"),
        (str(tmp_path), "no config.json"),
    ]:
        with pytest.raises(FileNotFoundError, match=message) as info:
            load_reward(spec)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name, message",
    [
        ("nan_reward", r"non-finite score nan for sample 1 \(prompt '7\+5='\)"),
        ("short_reward", "returned 1 scores for 3 samples"),
        ("none_reward", "returned NoneType None; it must return one float per sample"),
        ("text_reward", "returned a list holding str '1.0' at index 0; it must return one float"),
        ("dict_reward", r"returned dict \{'score': \[1.0, 0.0, 1.0\]\}; it must return"),
        ("bool_reward", "returned a list holding bool True at index 0"),
        ("str_reward", "returned str 'good'; it must return one float per sample"),
        ("failing_reward", "raised ZeroDivisionError: division by zero"),
        ("one_argument", r"raised TypeError: .*takes 1 positional argument but 2 were given"),
    ],
)
def test_scorer_output_checks(fake_module, name, message):
    with pytest.raises(RewardError, match=f"^reward {fake_module}:{name}: {message}") as info:
        load_reward(f"{fake_module}:{name}")(PROMPTS, RESPONSES)
    assert "\n" not in str(info.value)


def test_scorer_outputs_that_are_numbers(fake_module):
    scores = load_reward(f"{fake_module}:array_reward")(PROMPTS, RESPONSES)
    assert scores.dtype == torch.float32 and scores.tolist() == [0.5, 1.0, 2.0]
    assert load_reward(f"{fake_module}:tensor_list")(PROMPTS, RESPONSES).tolist() == [1.0] * 3
    with pytest.raises(RewardError, match="3 prompts but 2 responses"):
        load_reward("lightning_rlhf.data.tasks.arithmetic:reward")(PROMPTS, RESPONSES[:2])


def test_weighted_rewards_by_hand(fake_module):
    specs = ["lightning_rlhf.data.tasks.arithmetic:reward", f"{fake_module}:length_reward"]
    fn = load_rewards(specs, [1.0, -0.5])
    parts = fn.parts(PROMPTS, RESPONSES)
    # arithmetic: "42" right (1.0); "13" for 12 shares the tens digit (0.5 * 1/2); "1" for 198
    # shares none (0.0). Lengths 2, 2, 1. Total 1 * a - 0.5 * l.
    assert list(parts) == ["reward", "length_reward"]
    assert parts["reward"].tolist() == [1.0, 0.25, 0.0]
    assert parts["length_reward"].tolist() == [2.0, 2.0, 1.0]
    assert fn(PROMPTS, RESPONSES).tolist() == [0.0, -0.75, -0.5]
    assert fn(PROMPTS, RESPONSES).dtype == torch.float32


def test_builtin_task_reward_by_spec():
    fn = load_reward("builtin:arithmetic")
    torch.testing.assert_close(fn(PROMPTS, RESPONSES), torch.tensor([1.0, 0.25, 0.0]))
    known = r"known: arithmetic, scratchpad$"
    with pytest.raises(RewardError, match=r"unknown built-in task 'nope'; " + known):
        load_reward("builtin:nope")
    assert reward_names(["builtin:arithmetic", "runs/rm/export"]) == ["arithmetic", "rm"]


def test_one_reward_is_a_sum_of_one_term():
    spec = "lightning_rlhf.data.tasks.arithmetic:reward"
    fn = load_rewards(spec)
    assert isinstance(fn, WeightedReward) and fn.weights == [1.0]
    assert torch.equal(fn(PROMPTS, RESPONSES), load_reward(spec)(PROMPTS, RESPONSES))


def test_reward_names_are_short_and_distinct():
    specs = ["a.b:reward", "runs/rm/export", "runs/rm2/", "c.d:reward", "models/deberta"]
    assert reward_names(specs) == ["reward_1", "rm", "rm2", "reward_4", "deberta"]


SCORER = "lightning_rlhf.data.tasks.arithmetic:reward"


@pytest.mark.parametrize(
    "spec, weights, message",
    [
        ([SCORER, SCORER], [1.0], "GRPO: reward_weights has 1 weight(s) for 2 reward(s) ("),
        (SCORER, [1.0, 2.0], "GRPO: reward_weights has 2 weight(s) for 1 reward(s) ("),
        ([SCORER, SCORER], [1.0, float("nan")], "GRPO: reward_weights must be finite numbers, "
                                                "got nan"),
        ([SCORER], [float("inf")], "GRPO: reward_weights must be finite numbers, got inf"),
        ([SCORER, SCORER], [0.0, 0.0], "GRPO: reward_weights are all 0"),
        ([], None, "GRPO: reward must be a spec or a non-empty list of specs, got []"),
        ([SCORER, ""], None, "GRPO: each reward must be a non-empty string, got ''"),
    ],
)  # fmt: skip
def test_bad_reward_lists_and_weights_are_one_line_errors(spec, weights, message):
    with pytest.raises(RewardError) as err:
        load_rewards(spec, weights, where="GRPO")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_policy_export_given_as_reward_is_refused(tmp_path):
    """A causal-LM export has no score head: transformers would add a random one."""
    tok = get_tokenizer("arithmetic")
    policy = load_causal_lm(ModelConfig(config=TINY), tok)
    export = export_pretrained(policy, tok, tmp_path / "policy")
    with pytest.raises(UntrainedWeightsError) as info:
        load_reward(str(export))
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    assert f"reward model {str(export)!r} has no trained score head" in message
    assert "lack score.weight;" in message
    # training a reward model from that same policy export still starts from a fresh head
    assert load_reward_model(ModelConfig(name_or_path=str(export)), tok).score.weight.shape[0] == 1


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


def test_classifier_with_two_outputs_given_as_reward_is_refused(tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tok = get_tokenizer("arithmetic")
    options = {k: v for k, v in TINY.items() if k != "model_type"}
    config = AutoConfig.for_model(TINY["model_type"], vocab_size=len(tok), num_labels=2, **options)
    export = export_pretrained(
        AutoModelForSequenceClassification.from_config(config), tok, tmp_path / "two_labels"
    )
    with pytest.raises(UntrainedWeightsError) as info:
        load_reward(str(export))
    assert str(info.value) == (
        f"reward model {str(export)!r}: score.weight has shape [2, 32] but a reward model's has "
        "[1, 32] (one score per sequence, num_labels=1)"
    )
