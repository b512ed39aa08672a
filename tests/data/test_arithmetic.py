"""Tests of the embedded arithmetic task: tokenizer, teacher noise, reward, splits, generators."""

import importlib
import math

import pytest
from transformers import AutoTokenizer

from lightning_rlhf.data.tasks import TASKS, get_task, get_tokenizer
from lightning_rlhf.data.tasks.arithmetic import (
    MAX_REWARD,
    ArithmeticTask,
    build_tokenizer,
    carry_free_sum,
    has_carry,
    parse_prompt,
    reward,
)

TEXTS = ["37+48=85", "Human: hi - ok?\n\nAssistant: Fine, thanks.", "  a  b\n", "0123456789+="]


def _binomial_tol(p: float, n: int, sigmas: float = 4.0) -> float:
    """``sigmas`` standard deviations of a binomial proportion with probability ``p`` over ``n``."""
    return sigmas * math.sqrt(p * (1 - p) / n)


def _problems(records: list[dict]) -> set[tuple[int, int]]:
    return {parse_prompt(r["prompt"]) for r in records}


def _oracle(prompts: list[str]) -> list[str]:
    return [str(sum(parse_prompt(p))) for p in prompts]


# ---- tokenizer ----------------------------------------------------------------------------
def test_special_token_ids() -> None:
    tok = build_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == (
        "<pad>",
        "<bos>",
        "<eos>",
        "<unk>",
    )
    assert tok.convert_tokens_to_ids(list("0123456789+=")) == list(range(4, 16))


def test_one_token_per_character_and_bos_prepended() -> None:
    tok = build_tokenizer()
    plain = tok("37+48=", add_special_tokens=False)["input_ids"]
    assert plain == tok.convert_tokens_to_ids(list("37+48="))
    assert tok("37+48=")["input_ids"] == [tok.bos_token_id] + plain
    assert tok("a\u00e9b", add_special_tokens=False)["input_ids"][1] == tok.unk_token_id


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text: str) -> None:
    tok = build_tokenizer()
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text  # no spaces between characters
    assert tok.decode(ids) == "<bos>" + text


def test_save_and_load_through_auto_tokenizer(tmp_path) -> None:
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        ids = loaded(text)["input_ids"]
        assert ids == tok(text)["input_ids"]
        assert loaded.decode(ids, skip_special_tokens=True) == text
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    assert len(loaded) == len(tok)


# ---- problems and reward ------------------------------------------------------------------
def test_carry_helpers_and_prompt_parsing() -> None:
    assert has_carry(57, 48) and has_carry(50, 60) and has_carry(5, 5)
    assert not has_carry(12, 34) and not has_carry(0, 0) and not has_carry(100, 899)
    assert carry_free_sum(57, 48) == 95 and carry_free_sum(55, 55) == 0
    assert carry_free_sum(123, 9) == 122 and carry_free_sum(12, 34) == 46
    assert parse_prompt("37+48=") == (37, 48)
    for bad in ["37+48", "37-48=", "a+1=", "+1=", "1+2+3="]:
        with pytest.raises(ValueError, match="a\\+b=") as err:
            parse_prompt(bad)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("prompt", "response", "expected"),
    [
        ("37+48=", "85", 1.0),  # exact
        ("37+48=", " 85\n", 1.0),  # whitespace stripped
        ("37+48=", "85abc", 1.0),  # only the leading run of digits counts
        ("37+48=", "75", 0.25),  # units match: 0.5 * 1/2
        ("57+48=", "95", 0.5 / 3),  # carry forgotten: units match, 0.5 * 1/3
        ("57+48=", "05", 0.5 * 2 / 3),  # two of three digits aligned from the right
        ("57+48=", "1050", 0.0),  # longer, nothing aligned
        ("57+48=", "", 0.0),  # empty
        ("57+48=", "   ", 0.0),
        ("57+48=", "abc", 0.0),  # garbage
        ("57+48=", "-105", 0.0),  # not a leading digit
    ],
)
def test_reward_hand_worked(prompt: str, response: str, expected: float) -> None:
    assert reward([prompt], [response]) == [pytest.approx(expected)]


def test_reward_is_importable_as_python_scorer_and_checks_lengths() -> None:
    spec = "lightning_rlhf.data.tasks.arithmetic:reward"  # the Python-scorer form
    module, _, name = spec.partition(":")
    scorer = getattr(importlib.import_module(module), name)
    assert scorer(["1+2=", "9+9="], ["3", "27"]) == [MAX_REWARD, 0.0]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        scorer(["1+2=", "9+9="], ["3"])


# ---- the teacher --------------------------------------------------------------------------
def _error_rates(task: ArithmeticTask, n: int) -> tuple[float, int, float, int, list[dict]]:
    """Teacher error rates on carry and non-carry demonstrations, with the group sizes."""
    demos = task.demonstrations(n)
    carry = [d for d in demos if has_carry(*parse_prompt(d["prompt"]))]
    plain = [d for d in demos if not has_carry(*parse_prompt(d["prompt"]))]
    wrong = lambda ds: sum(d["response"] != str(sum(parse_prompt(d["prompt"]))) for d in ds)
    return wrong(carry) / len(carry), len(carry), wrong(plain) / len(plain), len(plain), demos


def test_teacher_forgets_carries_at_the_stated_rate() -> None:
    task = ArithmeticTask(carry_forget=0.7, digit_noise=0.0, seed=3)
    carry_err, n_carry, plain_err, _, demos = _error_rates(task, 20_000)
    assert abs(carry_err - 0.7) < _binomial_tol(0.7, n_carry)
    assert plain_err == 0.0
    for d in demos:  # every mistake is exactly the carry-free sum
        a, b = parse_prompt(d["prompt"])
        assert d["response"] in (str(a + b), str(carry_free_sum(a, b)))


def test_teacher_digit_noise_at_the_stated_rate() -> None:
    task = ArithmeticTask(carry_forget=0.0, digit_noise=0.05, seed=4)
    demos = task.demonstrations(20_000)
    wrong = [d for d in demos if d["response"] != str(sum(parse_prompt(d["prompt"])))]
    assert abs(len(wrong) / len(demos) - 0.05) < _binomial_tol(0.05, len(demos))
    for d in wrong:  # one digit changed, same length, no new leading zero
        answer = str(sum(parse_prompt(d["prompt"])))
        assert len(d["response"]) == len(answer) and d["response"][0] != "0"
        assert sum(x != y for x, y in zip(answer, d["response"])) == 1


def test_teacher_default_error_rates() -> None:
    task = ArithmeticTask(seed=5)  # carry_forget 0.7, digit_noise 0.05
    carry_err, n_carry, plain_err, n_plain, _ = _error_rates(task, 20_000)
    assert abs(plain_err - 0.05) < _binomial_tol(0.05, n_plain)
    # noise on a forgotten answer can, rarely (< 0.05 / 9), land on the right one
    expected = 0.7 + 0.3 * 0.05
    assert abs(carry_err - expected) < _binomial_tol(expected, n_carry) + 0.05 / 9
    assert n_carry / (n_carry + n_plain) == pytest.approx(0.7556, abs=0.02)  # 2-digit sums


# ---- splits and generators ----------------------------------------------------------------
def _all_training_records(task: ArithmeticTask) -> dict[str, list[dict]]:
    return {
        "prompts": task.prompts(3000) + task.prompts(1000, offset=1),
        "demonstrations": task.demonstrations(3000) + task.demonstrations(1000, offset=1),
        "scored": task.scored(3000),
        "pairs": task.pairs(2000),
        "ranked": task.ranked(1000, k=3),
    }


def test_heldout_problems_never_in_training_generators() -> None:
    task = ArithmeticTask(seed=1)
    heldout = _problems(task.heldout_prompts(500)) | _problems(task.heldout_prompts(500, offset=1))
    assert len(task.heldout_prompts(500)) == 500 == len(_problems(task.heldout_prompts(500)))
    assert all(task.is_heldout(a, b) for a, b in heldout)
    for name, records in _all_training_records(task).items():
        assert not (_problems(records) & heldout), name
        assert not any(task.is_heldout(a, b) for a, b in _problems(records)), name
    space = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    assert 0.08 < sum(task.is_heldout(a, b) for a, b in space) / len(space) < 0.12


def test_same_seed_same_records_different_seed_or_offset_different() -> None:
    one, same, other = ArithmeticTask(seed=7), ArithmeticTask(seed=7), ArithmeticTask(seed=8)
    for method in ["prompts", "demonstrations", "scored", "pairs", "ranked", "heldout_prompts"]:
        records = getattr(one, method)(200)
        assert records == getattr(same, method)(200), method
        assert records != getattr(other, method)(200), method
        assert records != getattr(one, method)(200, offset=1), method


def test_records_have_the_documented_fields() -> None:
    task = ArithmeticTask(min_digits=1, max_digits=3)
    assert set(task.prompts(1)[0]) == {"prompt"}
    assert set(task.demonstrations(1)[0]) == {"prompt", "response"}
    for r in task.scored(300):
        assert r["reward"] == reward([r["prompt"]], [r["response"]])[0]
    digits = {len(str(a)) for a, _ in _problems(task.prompts(300))}
    assert digits == {1, 2, 3}


def test_pairs_strictly_ordered() -> None:
    for r in ArithmeticTask(min_digits=1, max_digits=3, seed=2).pairs(2000):
        assert r["chosen_reward"] > r["rejected_reward"]
        assert [r["chosen_reward"], r["rejected_reward"]] == reward(
            [r["prompt"]] * 2, [r["chosen"], r["rejected"]]
        )


def test_pairs_fallbacks_when_the_teacher_always_ties() -> None:
    perfect = ArithmeticTask(carry_forget=0.0, digit_noise=0.0)
    for r in perfect.pairs(200):  # teacher always right: right vs a one-digit perturbation
        answer = str(sum(parse_prompt(r["prompt"])))
        assert r["chosen"] == answer and r["rejected"] != answer
        assert len(r["rejected"]) == len(answer)
    forgetful = ArithmeticTask(carry_forget=1.0, digit_noise=0.0)
    for r in forgetful.pairs(200):
        a, b = parse_prompt(r["prompt"])
        assert r["chosen"] == str(a + b)
        if has_carry(a, b):  # teacher always wrong the same way: right vs its mistake
            assert r["rejected"] == str(carry_free_sum(a, b))


def test_ranked_lists_sorted() -> None:
    records = ArithmeticTask(seed=6).ranked(500, k=5)
    assert any(len(set(r["rewards"])) > 1 for r in records)
    for r in records:
        assert len(r["responses"]) == len(r["rewards"]) == 5
        assert r["rewards"] == sorted(r["rewards"], reverse=True)
        assert r["rewards"] == reward([r["prompt"]] * 5, r["responses"])


# ---- evaluation ---------------------------------------------------------------------------
def test_evaluate_oracle_is_perfect_and_batches() -> None:
    task = ArithmeticTask()
    sizes: list[int] = []
    oracle = lambda prompts: sizes.append(len(prompts)) or _oracle(prompts)
    result = task.evaluate(oracle, n=500, batch_size=200)
    assert sizes == [200, 200, 100]
    assert result["accuracy"] == result["carry_accuracy"] == result["non_carry_accuracy"] == 1.0
    assert result["reward"] == 1.0
    assert 0.65 * 500 < result["n_carry"] < 0.85 * 500  # ~75.6% of 2-digit sums carry
    with pytest.raises(ValueError, match="returned 1 responses for 200 prompts"):
        task.evaluate(lambda prompts: ["1"], n=500, batch_size=200)


def test_evaluate_sees_the_teachers_systematic_mistake() -> None:
    task = ArithmeticTask(carry_forget=0.7, digit_noise=0.0, seed=9)
    result = task.evaluate(task.teacher)
    assert abs(result["carry_accuracy"] - 0.3) < _binomial_tol(0.3, int(result["n_carry"]))
    assert result["non_carry_accuracy"] == 1.0
    forgetful = lambda prompts: [str(carry_free_sum(*parse_prompt(p))) for p in prompts]
    result = task.evaluate(forgetful, n=300)
    assert result["carry_accuracy"] == 0.0 and result["non_carry_accuracy"] == 1.0
    assert 0.0 < result["reward"] < 1.0


# ---- registry -----------------------------------------------------------------------------
def test_get_task_and_tokenizer() -> None:
    assert list(TASKS) == ["arithmetic", "scratchpad"] and TASKS["arithmetic"] is ArithmeticTask
    task = get_task("arithmetic", carry_forget=0.5, seed=3)
    assert isinstance(task, ArithmeticTask) and task.carry_forget == 0.5 and task.seed == 3
    assert get_tokenizer("arithmetic").get_vocab() == build_tokenizer().get_vocab()
    known = "unknown task 'sorting'; known tasks: arithmetic, scratchpad"
    with pytest.raises(ValueError, match=known):
        get_task("sorting")
    with pytest.raises(ValueError, match="unknown task"):
        get_tokenizer("sorting")
    with pytest.raises(ValueError, match="unknown option\\(s\\) carry_forgt") as err:
        get_task("arithmetic", carry_forgt=0.5)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "options",
    [
        {"min_digits": 3, "max_digits": 2},
        {"min_digits": 0},
        {"carry_forget": 1.5},
        {"digit_noise": -0.1},
    ],
)
def test_bad_options_rejected(options: dict) -> None:
    with pytest.raises(ValueError, match="must|need"):
        ArithmeticTask(**options)
