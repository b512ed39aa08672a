"""The embedded default task: multi-digit addition taught by a noisy teacher.

Prompts look like ``37+48=``; the right response is ``str(a + b)``. The teacher that writes the
demonstrations forgets carries on part of the carry problems and sometimes garbles a digit, so SFT
copies its systematic mistake while reward-aware methods can do better. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

MAX_REWARD = 1.0
"""The reward of an exactly right answer; every other response scores less."""

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
"""Special tokens, with ids 0..3 in this order."""

CHARACTERS = string.digits + "+=" + " -\n:.,?!'" + string.ascii_lowercase + string.ascii_uppercase
"""Ordinary characters of the vocabulary, with ids from 4 on: the task's own, then harmless text."""

_HASH_BUCKETS = 10_000


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer of the task, in code (nothing read from disk).

    One token per character (WordLevel over single characters; unknown characters become
    ``<unk>``), ``<pad>`` is id 0, and ``<bos>`` is prepended when ``add_special_tokens=True``, as
    for Llama. Decoding joins characters without spaces, so ``decode(encode(s))`` gives ``s`` back.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(CHARACTERS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    bos = ("<bos>", vocab["<bos>"])
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B:1", special_tokens=[bos]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


def has_carry(a: int, b: int) -> bool:
    """Whether adding the non-negative ``a`` and ``b`` carries in any column."""
    while a or b:
        if a % 10 + b % 10 >= 10:
            return True
        a, b = a // 10, b // 10
    return False


def carry_free_sum(a: int, b: int) -> int:
    """The teacher's systematic mistake: each column written as ``(a_i + b_i) mod 10``.

    No carry is propagated and no leading carry digit is written (``57+48`` gives ``95``).
    """
    total, place = 0, 1
    while a or b:
        total += (a % 10 + b % 10) % 10 * place
        a, b, place = a // 10, b // 10, place * 10
    return total


def format_prompt(a: int, b: int) -> str:
    """The prompt of a problem: ``"37+48="``."""
    return f"{a}+{b}="


def parse_prompt(prompt: str) -> tuple[int, int]:
    """The operands of a prompt ``"a+b="`` (surrounding whitespace is ignored)."""
    text = prompt.strip()
    left, plus, right = text.rstrip("=").partition("+")
    if not (text.endswith("=") and plus and left.isdigit() and right.isdigit()):
        raise ValueError(f"not an arithmetic prompt of the form 'a+b=': {prompt!r}")
    return int(left), int(right)


def correct_answer(prompt: str) -> str:
    """The right response to a prompt: ``str(a + b)``."""
    a, b = parse_prompt(prompt)
    return str(a + b)


def _leading_digits(text: str) -> str:
    """The leading run of digits of ``text`` after stripping whitespace ("" if there is none)."""
    text = text.strip()
    end = 0
    while end < len(text) and text[end] in string.digits:
        end += 1
    return text[:end]


def score(answer: str, response: str) -> float:
    """Reward of one response given the right answer; see :func:`reward`."""
    digits = _leading_digits(response)
    if not digits:
        return 0.0
    if digits == answer:
        return MAX_REWARD
    matches = sum(x == y for x, y in zip(reversed(answer), reversed(digits)))
    return 0.5 * matches / max(len(answer), len(digits))


def reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Exact-match reward with partial credit per digit, in ``[0, 1]``, for each pair.

    The response is stripped of whitespace and only its leading run of digits is kept (so
    ``"105 and more"`` reads as ``105``). That number scores 1.0 when it equals ``a + b``; else
    ``0.5 * m / max(len(answer), len(digits))``, where ``m`` counts the positions, aligned from the
    right, whose digits agree (always below 0.5); an empty or non-numeric response scores 0.0.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [score(correct_answer(p), r) for p, r in zip(prompts, responses)]


def is_heldout(a: int, b: int, fraction: float = 0.1) -> bool:
    """Whether problem ``(a, b)`` belongs to the held-out split (a fixed hash, not ``hash()``)."""
    digest = hashlib.blake2b(f"{a}+{b}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _HASH_BUCKETS < fraction * _HASH_BUCKETS


def perturb(answer: str, rng: random.Random) -> str:
    """``answer`` with one random digit replaced by a different one (no new leading zero)."""
    i = rng.randrange(len(answer))
    banned = {answer[i], "0"} if i == 0 and len(answer) > 1 else {answer[i]}
    digit = rng.choice([d for d in string.digits if d not in banned])
    return answer[:i] + digit + answer[i + 1 :]


def _mean(values: list[float]) -> float:
    """Mean of ``values``, NaN for an empty list."""
    return sum(values) / len(values) if values else float("nan")


@dataclass
class ArithmeticTask:
    """Addition problems ``a+b=`` and a noisy teacher that answers them.

    Args:
        min_digits: fewest digits of an operand (the digit count is drawn uniformly, then the
            operand uniformly among numbers with that many digits; 1-digit operands include 0).
        max_digits: most digits of an operand.
        carry_forget: probability that the teacher, on a problem with a carry, forgets every
            carry (see :func:`carry_free_sum`).
        digit_noise: probability that the teacher then replaces one random digit of its answer
            with a different random digit.
        seed: seed of every generator below; each method and ``offset`` has its own RNG stream,
            so ``offset=1`` draws a validation set independent of the training one (``offset=0``).
        heldout_fraction: share of all problems, picked by a fixed hash of ``(a, b)``, that no
            training generator ever yields; only ``heldout_prompts`` and ``evaluate`` use them.

    Records are plain dicts; responses carry no EOS (the data module appends it). Subclasses
    (other built-in tasks on the same problems) change the teacher and the scoring through
    ``teacher_answer``, ``right_response``, ``wrong_response`` and ``score_response``.
    """

    stream: ClassVar[str] = "arithmetic"
    """Prefix of every RNG stream (a subclass's own, so its records differ)."""

    min_digits: int = 2
    max_digits: int = 2
    carry_forget: float = 0.7
    digit_noise: float = 0.05
    seed: int = 0
    heldout_fraction: float = 0.1

    def __post_init__(self) -> None:
        """Check the options, with one-line errors."""
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(
                f"need 1 <= min_digits <= max_digits, got {self.min_digits}, {self.max_digits}"
            )
        for name in ("carry_forget", "digit_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must lie in (0, 1), got {self.heldout_fraction}")

    # ---- problems -------------------------------------------------------------------------
    def _rng(self, stream: str, offset: int) -> random.Random:
        """The RNG of one method and offset (string seeds are hashed with SHA-512, not salted)."""
        return random.Random(f"{self.stream}/{self.seed}/{stream}/{offset}")

    def _operand(self, rng: random.Random) -> int:
        """One operand with a uniformly drawn number of digits."""
        digits = rng.randint(self.min_digits, self.max_digits)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    def is_heldout(self, a: int, b: int) -> bool:
        """Whether problem ``(a, b)`` is held out from every training generator."""
        return is_heldout(a, b, self.heldout_fraction)

    def _problem(self, rng: random.Random, heldout: bool = False) -> tuple[int, int]:
        """One problem from the training split (or the held-out split), by rejection."""
        for _ in range(100_000):
            a, b = self._operand(rng), self._operand(rng)
            if self.is_heldout(a, b) == heldout:
                return a, b
        split = "held-out" if heldout else "training"
        raise ValueError(
            f"found no {split} problem for digits {self.min_digits}..{self.max_digits}"
        )

    def teacher_answer(self, a: int, b: int, rng: random.Random) -> str:
        """One teacher response: forgets carries w.p. ``carry_forget``, then digit noise."""
        forget = has_carry(a, b) and rng.random() < self.carry_forget
        answer = str(carry_free_sum(a, b) if forget else a + b)
        if rng.random() < self.digit_noise:
            answer = perturb(answer, rng)
        return answer

    def right_response(self, a: int, b: int) -> str:
        """The right response to ``a+b=``: ``str(a + b)``."""
        return str(a + b)

    def wrong_response(self, a: int, b: int, rng: random.Random) -> str:
        """A wrong response: the right answer with one digit changed (see :func:`perturb`)."""
        return perturb(self.right_response(a, b), rng)

    def score_response(self, a: int, b: int, response: str) -> float:
        """The reward of ``response`` to ``a+b=`` (see :func:`reward`); ``MAX_REWARD`` iff right."""
        return score(str(a + b), response)

    def reward(self, prompts: list[str], responses: list[str]) -> list[float]:
        """This task's reward of each (prompt, response) pair, in ``[0, MAX_REWARD]``."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [self.score_response(*parse_prompt(p), r) for p, r in zip(prompts, responses)]

    def teacher(self, prompts: list[str], offset: int = 0) -> list[str]:
        """The teacher as a generate callable (``evaluate(task.teacher)`` scores the teacher)."""
        rng = self._rng("teacher", offset)
        return [self.teacher_answer(*parse_prompt(p), rng) for p in prompts]

    # ---- training generators --------------------------------------------------------------
    def prompts(self, n: int, offset: int = 0) -> list[dict]:
        """``n`` training prompts ``{"prompt"}`` for online RL."""
        rng = self._rng("prompts", offset)
        return [{"prompt": format_prompt(*self._problem(rng))} for _ in range(n)]

    def demonstrations(self, n: int, offset: int = 0) -> list[dict]:
        """``n`` teacher demonstrations ``{"prompt", "response"}``."""
        rng = self._rng("demonstrations", offset)
        records = []
        for _ in range(n):
            a, b = self._problem(rng)
            records.append(
                {"prompt": format_prompt(a, b), "response": self.teacher_answer(a, b, rng)}
            )
        return records

    def scored(self, n: int, offset: int = 0) -> list[dict]:
        """``n`` teacher responses with their reward ``{"prompt", "response", "reward"}``."""
        rng = self._rng("scored", offset)
        records = []
        for _ in range(n):
            a, b = self._problem(rng)
            response = self.teacher_answer(a, b, rng)
            records.append(
                {
                    "prompt": format_prompt(a, b),
                    "response": response,
                    "reward": self.score_response(a, b, response),
                }
            )
        return records

    def _pair(self, a: int, b: int, rng: random.Random, max_tries: int) -> dict:
        """Two teacher samples ordered by reward, redrawn on a tie; then a fallback (see pairs)."""
        for _ in range(max_tries):
            first, second = self.teacher_answer(a, b, rng), self.teacher_answer(a, b, rng)
            r_first = self.score_response(a, b, first)
            r_second = self.score_response(a, b, second)
            if r_first != r_second:
                break
        else:
            # both samples tied every time: the right answer against a wrong one
            wrong = first if r_first < MAX_REWARD else self.wrong_response(a, b, rng)
            first, second = self.right_response(a, b), wrong
            r_first, r_second = MAX_REWARD, self.score_response(a, b, wrong)
        if r_first < r_second:
            first, second, r_first, r_second = second, first, r_second, r_first
        return {
            "prompt": format_prompt(a, b),
            "chosen": first,
            "rejected": second,
            "chosen_reward": r_first,
            "rejected_reward": r_second,
        }

    def pairs(self, n: int, offset: int = 0, max_tries: int = 4) -> list[dict]:
        """``n`` preference pairs ``{"prompt", "chosen", "rejected", "chosen_reward",
        "rejected_reward"}`` with ``chosen_reward > rejected_reward`` always.

        Two teacher samples per prompt, ordered by reward; on a tie both are redrawn, up to
        ``max_tries`` times, after which the right answer is paired with the teacher's wrong one
        (or, if the teacher was right, with the right answer with one digit changed).
        """
        if max_tries < 1:
            raise ValueError(f"max_tries must be at least 1, got {max_tries}")
        rng = self._rng("pairs", offset)
        return [self._pair(*self._problem(rng), rng, max_tries) for _ in range(n)]

    def ranked(self, n: int, k: int = 4, offset: int = 0) -> list[dict]:
        """``n`` ranked lists ``{"prompt", "responses", "rewards"}`` of ``k`` teacher samples each,
        best first (rewards in descending order; ties keep the order they were drawn in)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        rng = self._rng("ranked", offset)
        records = []
        for _ in range(n):
            a, b = self._problem(rng)
            samples = [self.teacher_answer(a, b, rng) for _ in range(k)]
            scored = sorted(
                ((self.score_response(a, b, s), s) for s in samples), key=lambda x: -x[0]
            )
            records.append(
                {
                    "prompt": format_prompt(a, b),
                    "responses": [s for _, s in scored],
                    "rewards": [r for r, _ in scored],
                }
            )
        return records

    # ---- evaluation -----------------------------------------------------------------------
    def heldout_prompts(self, n: int, offset: int = 0) -> list[dict]:
        """``n`` held-out prompts ``{"prompt"}``, all distinct while the held-out split allows."""
        rng = self._rng("heldout", offset)
        problems: list[tuple[int, int]] = []
        seen: set[tuple[int, int]] = set()
        patience = 20 * n + 1000  # repeats skipped before duplicates are allowed
        while len(problems) < n:
            problem = self._problem(rng, heldout=True)
            if problem in seen and patience > 0:
                patience -= 1
                continue
            seen.add(problem)
            problems.append(problem)
        return [{"prompt": format_prompt(a, b)} for a, b in problems]

    def evaluate(
        self,
        generate: Callable[[list[str]], list[str]],
        n: int = 500,
        batch_size: int = 250,
    ) -> dict[str, float]:
        """Score ``generate`` (prompts -> decoded responses) on ``n`` held-out prompts.

        Returns means over the prompts: ``accuracy`` (exact matches), ``carry_accuracy`` and
        ``non_carry_accuracy`` (NaN when a group is empty), ``reward``; and ``n_carry``, the
        number of carry problems among them.
        """
        prompts = [record["prompt"] for record in self.heldout_prompts(n)]
        responses: list[str] = []
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            out = list(generate(batch))
            if len(out) != len(batch):
                raise ValueError(f"generate returned {len(out)} responses for {len(batch)} prompts")
            responses.extend(out)
        rewards = self.reward(prompts, responses)
        exact = [float(r == MAX_REWARD) for r in rewards]
        carry = [has_carry(*parse_prompt(p)) for p in prompts]
        return {
            "accuracy": _mean(exact),
            "carry_accuracy": _mean([e for e, c in zip(exact, carry) if c]),
            "non_carry_accuracy": _mean([e for e, c in zip(exact, carry) if not c]),
            "reward": _mean(rewards),
            "n_carry": float(sum(carry)),
        }
