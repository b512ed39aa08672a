"""Tests of the scratchpad task: the written columns, the teachers, the final-answer reward, every
data format through the data module, and a tiny SFT fit on it through the CLI."""

from __future__ import annotations

import json
import math
import random
import re

import pytest

from lightning_rlhf.data.module import RLHFDataModule
from lightning_rlhf.data.tasks import TASKS, ScratchpadTask, get_task, get_tokenizer
from lightning_rlhf.data.tasks.arithmetic import parse_prompt
from lightning_rlhf.data.tasks.scratchpad import (
    final_answer,
    max_response_chars,
    partial_reward,
    reward,
    right_scratchpad,
    work_columns,
)
from lightning_rlhf.rl.rewards import load_reward
from tests.algorithms.e2e import TINY, run_fit

STEP = re.compile(r"^(\d)\+(\d)(\+1)?=(\d+)$")
EXAMPLE = "9+2=11,3+1+1=5,1+7=8,2+6=8,8+9=17,4+3+1=8:878851"


def _check_columns(a: int, b: int, response: str) -> None:
    """Every written column adds up and takes the carry of the one before (the right teacher)."""
    work, _, answer = response.rpartition(":")
    carry = 0
    for i, step in enumerate(work.split(",")):
        x, y, plus_one, total = STEP.match(step).groups()
        assert (int(x), int(y)) == (a // 10**i % 10, b // 10**i % 10)
        assert bool(plus_one) == bool(carry) and int(total) == int(x) + int(y) + carry
        carry = int(total) // 10
    assert answer == str(a + b)


def test_the_issues_worked_example_and_edge_cases() -> None:
    assert right_scratchpad(482139, 396712) == EXAMPLE
    assert right_scratchpad(5, 3) == "5+3=8:8"
    assert right_scratchpad(95, 7) == "5+7=12,9+0+1=10:102"  # shorter operand read with zeros
    worst = right_scratchpad(999999, 999999)
    assert len(worst) == max_response_chars(6) - 2  # the bound holds with room
    tok = get_tokenizer("scratchpad")
    assert tok.unk_token_id not in tok(EXAMPLE + ",:+=")["input_ids"]
    assert tok.decode(tok(EXAMPLE)["input_ids"], skip_special_tokens=True) == EXAMPLE


def test_right_teacher_is_always_right() -> None:
    task = ScratchpadTask(min_digits=1, max_digits=7, carry_forget=0.0, seed=5)
    for record in task.scored(400):
        a, b = parse_prompt(record["prompt"])
        _check_columns(a, b, record["response"])
        assert record["reward"] == 1.0
    assert task.evaluate(task.teacher, n=200)["accuracy"] == 1.0


def test_forgotten_carry_lowers_the_answer_by_its_column_and_sits_early() -> None:
    text, forgotten = work_columns(482139, 396712, forget=lambda i: i == 1)  # due in column 1
    assert forgotten == 1 and text.endswith(":" + str(482139 + 396712 - 10))
    assert text.startswith("9+2=11,3+1=4,")  # the mistake is in the second column written


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_noisy_teacher_forgets_each_due_carry_with_probability_p(p: float) -> None:
    task = ScratchpadTask(carry_forget=p, seed=1)
    rng, calls, forgotten, wrong_iff_forgot = random.Random(0), [], 0, True

    def forget(column: int) -> bool:
        calls.append(column)
        return rng.random() < p

    for record in task.prompts(3000):
        a, b = parse_prompt(record["prompt"])
        text, n = work_columns(a, b, forget)
        forgotten += n
        wrong_iff_forgot &= (final_answer(text) != str(a + b)) == (n > 0)
    assert wrong_iff_forgot
    due = len(calls)
    assert abs(forgotten / due - p) < 4 * math.sqrt(p * (1 - p) / due)
    # the task's own teacher: on problems with exactly one carry, wrong with probability p
    demos = task.demonstrations(4000)
    one = [d for d in demos if right_scratchpad(*parse_prompt(d["prompt"])).count("+1=") == 1]
    rate = sum(reward([d["prompt"]], [d["response"]])[0] == 0.0 for d in one) / len(one)
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / len(one))


@pytest.mark.parametrize(
    ("prompt", "response", "exact", "partial"),
    [
        ("482139+396712=", EXAMPLE, 1.0, 1.0),
        ("482139+396712=", "anything at all:878851", 1.0, 1.0),  # only the final answer counts
        ("482139+396712=", EXAMPLE[:-1] + "0", 0.0, 0.5 * 5 / 6),  # 5 of 6 digits agree
        ("482139+396712=", "9+2=11:1:878851 tail", 1.0, 1.0),  # the last colon, leading digits
        ("482139+396712=", "878851", 0.0, 0.0),  # no colon: no final answer
        ("482139+396712=", "9+2=11,3+1=4:", 0.0, 0.0),  # nothing after the colon
        ("12+34=", "2+4=6,1+3=4:4", 0.0, 0.0),  # "4" vs "46": nothing aligned from the right
        ("12+34=", "2+4=6,1+3=4:16", 0.0, 0.25),  # the units digit agrees
    ],
)
def test_reward_exact_and_partial_hand_worked(prompt, response, exact, partial) -> None:
    assert reward([prompt], [response]) == [pytest.approx(exact)]
    assert partial_reward([prompt], [response]) == [pytest.approx(partial)]
    task = get_task("scratchpad", partial_credit=True)
    assert task.reward([prompt], [response]) == [pytest.approx(partial)]


def test_rewards_load_as_python_scorer_specs() -> None:
    prompts, responses = ["12+34=", "12+34="], ["2+4=6,1+3=4:46", "2+4=6,1+3=4:16"]
    exact = load_reward("lightning_rlhf.data.tasks.scratchpad:reward")
    partial = load_reward("lightning_rlhf.data.tasks.scratchpad:partial_reward")
    assert exact(prompts, responses).tolist() == [1.0, 0.0]
    assert partial(prompts, responses).tolist() == [1.0, 0.25]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        reward(prompts, responses[:1])


@pytest.mark.parametrize("format", ["prompt", "response", "pair", "ranked"])
def test_every_data_format_from_the_data_module(format: str) -> None:
    options = {"min_digits": 4, "max_digits": 4, "carry_forget": 0.5}
    dm = RLHFDataModule(
        tokenizer="builtin:scratchpad",
        dataset="builtin:scratchpad",
        format=format,
        task_options=options,
        num_train=24,
        num_val=8,
        ranked_k=3,
        batch_size=4,
        max_response_length=max_response_chars(4) + 1,
    )
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (24, 8)
    batch = next(iter(dm.train_dataloader()))
    if format == "prompt":
        assert batch["prompt_input_ids"].shape[0] == 4
    elif format == "response":
        assert (batch["reward"] >= 0).all() and batch["input_ids"].shape[1] > 30
    else:
        n = 2 if format == "pair" else 3
        assert batch["rewards"].shape == (4, n)
        assert (batch["rewards"][:, :-1] >= batch["rewards"][:, 1:]).all()  # best first
    if format == "pair":
        rows = dm.train_dataset
        assert all(c > r for c, r in zip(rows["chosen_reward"], rows["rejected_reward"]))
    ids = batch["prompt_input_ids" if format == "prompt" else "input_ids"]
    assert (ids != dm.tokenizer.unk_token_id).all()


def test_registry_options_and_records_differ_from_arithmetic() -> None:
    assert TASKS["scratchpad"] is ScratchpadTask
    task = get_task("scratchpad", max_digits=8, carry_forget=0.1)
    assert (task.min_digits, task.max_digits, task.partial_credit) == (6, 8, False)
    assert task.max_response_chars == 81
    arith = get_task("arithmetic", min_digits=6, max_digits=6)
    assert task.prompts(5) != arith.prompts(5)  # its own RNG streams
    with pytest.raises(ValueError, match="carry_forget must lie in"):
        get_task("scratchpad", carry_forget=2.0)


def test_tiny_sft_fit_on_the_scratchpad_task_through_the_cli(tmp_path) -> None:
    policy = {"name_or_path": None, "config": {**TINY, "max_position_embeddings": 96}}
    cli, snap = run_fit(
        "sft/scratchpad.yaml",
        tmp_path,
        "--model.init_args.policy",
        json.dumps(policy),
        steps=4,
    )
    assert cli.trainer.global_step == 4 and snap.unchanged(cli.model) == []
    result = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= result["accuracy"] <= 1.0 and "sampled_reward" in result
    assert (tmp_path / "export" / "config.json").exists()
