"""A built-in task with long responses: column addition written out on a scratchpad.

Prompts are the arithmetic task's (``482139+396712=``); the right response works the columns from
right to left, writing a due carry into the next column, then gives the answer after a colon:
``9+2=11,3+1+1=5,1+7=8,2+6=8,8+9=17,4+3+1=8:878851`` (about 45 characters for 6 digits). The
teacher forgets each due carry with probability ``carry_forget``; it then works on consistently, so
its mistakes sit early in the response and its final answer is wrong. The reward reads only the
final answer (exact match; per-digit partial credit as an option), so the whole scratchpad is
credited by one terminal reward. The tokenizer is the arithmetic task's character tokenizer.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from lightning_rlhf.data.tasks.arithmetic import MAX_REWARD, ArithmeticTask, parse_prompt, perturb
from lightning_rlhf.data.tasks.arithmetic import score as partial_score

ANSWER_MARK = ":"
"""Separates the scratchpad from the final answer."""


def work_columns(a: int, b: int, forget: Callable[[int], bool] | None = None) -> tuple[str, int]:
    """The scratchpad of ``a + b`` and how many due carries were forgotten.

    Args:
        a, b: non-negative operands; the shorter one is read with leading zeros.
        forget: called with the index (0 = units) of each column a carry is due in; True drops
            that carry, which lowers the final answer by ``10**index``.
    Returns:
        ``("9+2=11,3+1+1=5,...:878851", forgotten)``; with no carry forgotten the answer is a + b.
    """
    steps, digits, carry, forgotten = [], [], 0, 0
    for i in range(max(len(str(a)), len(str(b)))):
        x, y = a // 10**i % 10, b // 10**i % 10
        if carry and forget is not None and forget(i):
            carry, forgotten = 0, forgotten + 1
        total = x + y + carry
        steps.append(f"{x}+{y}+1={total}" if carry else f"{x}+{y}={total}")
        digits.append(str(total % 10))
        carry = total // 10
    answer = ("1" if carry else "") + "".join(reversed(digits))
    return ",".join(steps) + ANSWER_MARK + answer, forgotten


def right_scratchpad(a: int, b: int) -> str:
    """The right response to ``a+b=``: every carry written, the answer ``a + b`` at the end."""
    return work_columns(a, b)[0]


def final_answer(response: str) -> str:
    """The leading run of digits after the response's last ``:`` ("" without a colon or digits)."""
    _, mark, tail = response.rpartition(ANSWER_MARK)
    if not mark:
        return ""
    tail = tail.strip()
    end = 0
    while end < len(tail) and tail[end] in string.digits:
        end += 1
    return tail[:end]


def score(answer: str, response: str, partial_credit: bool = False) -> float:
    """Reward of one response given the right answer, from its final answer only.

    1.0 when the final answer equals ``answer``; otherwise 0.0, or with ``partial_credit``
    ``0.5 * m / max(len(answer), len(final))`` where ``m`` counts digits that agree aligned from
    the right (always below 0.5; the arithmetic task's rule). No final answer scores 0.0.
    """
    final = final_answer(response)
    if not final:
        return 0.0
    if partial_credit:
        return partial_score(answer, final)
    return MAX_REWARD if final == answer else 0.0


def reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Exact-match reward (1.0 or 0.0) of each response's final answer; a Python scorer spec:
    ``lightning_rlhf.data.tasks.scratchpad:reward``."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [score(str(sum(parse_prompt(p))), r) for p, r in zip(prompts, responses)]


def partial_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Like :func:`reward` with per-digit partial credit below 0.5 for a wrong final answer
    (``lightning_rlhf.data.tasks.scratchpad:partial_reward``)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [score(str(sum(parse_prompt(p))), r, True) for p, r in zip(prompts, responses)]


def max_response_chars(max_digits: int) -> int:
    """The longest scratchpad of two ``max_digits``-digit operands: 10 * digits + 1 characters
    (columns ``9+9+1=19`` with commas, the colon and a carried leading 1)."""
    return 10 * max_digits + 1


@dataclass
class ScratchpadTask(ArithmeticTask):
    """Column addition with a written scratchpad, taught by a teacher that forgets carries.

    Args:
        min_digits, max_digits: digits of an operand, as in :class:`ArithmeticTask`.
        carry_forget: probability that the teacher forgets each due carry (independently); one
            forgotten carry at column i makes the final answer ``a + b - 10**i``.
        digit_noise: probability that the teacher then replaces one digit of its final answer.
        seed, heldout_fraction: as in :class:`ArithmeticTask` (the held-out problems are the same
            ones for the same fraction).
        partial_credit: score wrong final answers with per-digit partial credit (see
            :func:`score`) in every generator and in ``evaluate``; default exact match.

    Every generator of :class:`ArithmeticTask` (prompts, demonstrations, scored, pairs, ranked,
    heldout_prompts, evaluate) works unchanged; ``accuracy`` in ``evaluate`` is exact final answers.
    """

    min_digits: int = 6
    max_digits: int = 6
    carry_forget: float = 0.5
    digit_noise: float = 0.0
    seed: int = 0
    heldout_fraction: float = 0.1
    partial_credit: bool = False

    stream: ClassVar[str] = "scratchpad"

    def teacher_work(self, a: int, b: int, rng: random.Random) -> tuple[str, int]:
        """One teacher response and the number of due carries it forgot."""
        text, forgotten = work_columns(a, b, lambda _: rng.random() < self.carry_forget)
        if rng.random() < self.digit_noise:
            work, mark, answer = text.rpartition(ANSWER_MARK)
            text = work + mark + perturb(answer, rng)
        return text, forgotten

    def teacher_answer(self, a: int, b: int, rng: random.Random) -> str:
        """One teacher response (see :meth:`teacher_work`)."""
        return self.teacher_work(a, b, rng)[0]

    def right_response(self, a: int, b: int) -> str:
        """The right scratchpad of ``a+b=``."""
        return right_scratchpad(a, b)

    def wrong_response(self, a: int, b: int, rng: random.Random) -> str:
        """The right scratchpad with one digit of the final answer changed."""
        work, mark, answer = self.right_response(a, b).rpartition(ANSWER_MARK)
        return work + mark + perturb(answer, rng)

    def score_response(self, a: int, b: int, response: str) -> float:
        """The reward of ``response``, read from its final answer only (see :func:`score`)."""
        return score(str(a + b), response, self.partial_credit)

    @property
    def max_response_chars(self) -> int:
        """The longest response this task's problems can need (see :func:`max_response_chars`)."""
        return max_response_chars(self.max_digits)
