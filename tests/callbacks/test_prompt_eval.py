"""``callbacks.PromptEval`` in a config: a user's own prompts file and scorer give greedy
responses, their mean reward, an accuracy at a reward threshold and samples, logged and written
to the run directory; a prompts file without a prompt field fails before training."""

from __future__ import annotations

import csv
import json

import pytest

from lightning_rlhf.callbacks import PromptEval
from lightning_rlhf.data import DataError
from lightning_rlhf.rl.rewards import RewardError
from lightning_rlhf.rl.rollout import generate, left_pad_prompts
from tests.algorithms.e2e import run_fit, tiny_policy

PROMPTS = ["1+2=", "9+9=", "12+34=", "57+48=", "100+200="]


def prompt_length_score(prompts: list[str], responses: list[str]) -> list[float]:
    """A tenth of the prompt's length: rewards known by hand whatever the tiny model answers."""
    assert len(responses) == len(prompts)
    return [len(p) / 10 for p in prompts]


def _overlay(tmp_path, prompts_file) -> str:
    """A config overlay whose callbacks are PromptEval alone (after validation and at the end)."""
    init_args = {
        "prompts": str(prompts_file),
        # the list form of the online algorithms' reward: the task's reward runs, weighted 0
        "reward": ["tests.callbacks.test_prompt_eval:prompt_length_score", "builtin:arithmetic"],
        "reward_weights": [1.0, 0.0],
        "correct_at": 0.5,
        "max_new_tokens": 4,
        "num_samples": len(PROMPTS),
        "batch_size": 2,  # three generate calls, the last one of a single prompt
        "after_validation": True,
    }
    callback = {"class_path": "lightning_rlhf.callbacks.PromptEval", "init_args": init_args}
    path = tmp_path / "heldout.yaml"
    path.write_text(json.dumps({"trainer": {"callbacks": [callback]}}))  # JSON is YAML
    return str(path)


def test_prompt_eval_scores_greedy_responses_to_the_users_prompts(tmp_path):
    prompts_file = tmp_path / "heldout.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n"
                                    for i, p in enumerate(PROMPTS)))  # fmt: skip
    root = tmp_path / "run"
    cli, _ = run_fit("sft/arithmetic.yaml", root, *tiny_policy(), "--config",
                     _overlay(tmp_path, prompts_file), steps=2)  # fmt: skip
    # by hand: rewards 0.4, 0.4, 0.6, 0.6, 0.8; mean 0.56; 3 of 5 at least 0.5
    result = json.loads((root / "heldout.json").read_text())
    assert result["reward"] == pytest.approx(0.56) and result["accuracy"] == pytest.approx(0.6)
    assert 1 <= result["response_length"] <= 4
    rows = [json.loads(x) for x in (root / "heldout_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(PROMPTS)  # after the validation at step 2, then at the end
    final = rows[len(PROMPTS) :]
    assert [r["prompt"] for r in final] == PROMPTS and {r["step"] for r in rows} == {2}
    assert [r["reward"] for r in final] == pytest.approx([0.4, 0.4, 0.6, 0.6, 0.8])
    assert [r["correct"] for r in final] == [False, False, True, True, True]
    # the responses are the policy's greedy ones (decoded here without padding, one at a time)
    policy, tok = cli.model.policy, cli.datamodule.tokenizer
    for row in final:
        ids, mask = left_pad_prompts(tok, [row["prompt"]], next(policy.parameters()).device)
        assert generate(policy, tok, ids, mask, max_new_tokens=4).responses == [row["response"]]
    with open(root / "metrics.csv", newline="") as f:
        logged = [r for r in csv.DictReader(f) if r["heldout/reward"]]
    assert len(logged) == 2
    assert float(logged[-1]["heldout/accuracy"]) == pytest.approx(0.6)
    assert float(logged[-1]["heldout/reward"]) == pytest.approx(0.56)


def test_prompt_eval_refuses_a_file_without_prompts_before_training(tmp_path):
    prompts_file = tmp_path / "heldout.jsonl"
    prompts_file.write_text(json.dumps({"question": "1+2="}) + "\n")
    with pytest.raises(DataError, match="missing column 'prompt'") as err:
        run_fit("sft/arithmetic.yaml", tmp_path / "run", *tiny_policy(), "--config",
                _overlay(tmp_path, prompts_file), steps=2)  # fmt: skip
    assert str(prompts_file) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained


def test_prompt_eval_checks_its_options_in_one_line():
    with pytest.raises(RewardError, match=r"^PromptEval: reward_weights has 2 weight\(s\) for 1"):
        PromptEval(prompts="p.jsonl", reward="builtin:arithmetic", reward_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"^PromptEval: correct_at must be a finite number, got"):
        PromptEval(prompts="p.jsonl", reward="builtin:arithmetic", correct_at=float("nan"))
    with pytest.raises(ValueError, match=r"^PromptEval: max_new_tokens must be >= 1, got 0$"):
        PromptEval(prompts="p.jsonl", reward="builtin:arithmetic", max_new_tokens=0)
