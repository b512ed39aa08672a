"""Rewards for online RL: Python scorers, reward-model exports, running reward normalisation.

``load_reward("pkg.module:function")`` wraps a scorer ``(prompts, responses) -> list[float]``;
``load_reward("path/to/export")`` scores prompt + response text with a saved sequence classifier
(ours or any HF one), re-tokenised with ITS tokenizer. Every scorer returns a (B,) fp32 tensor and
refuses non-finite scores. A spec that cannot be loaded, an export without a trained score head and
a scorer returning anything but B finite numbers raise a one-line :class:`RewardError` naming the
spec. ``load_rewards([spec, ...], weights)`` sums several with weights (:class:`WeightedReward`).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lightning_rlhf.data.collate import pad, tokenize_prompts, tokenize_responses
from lightning_rlhf.data.formats import BUILTIN_PREFIX
from lightning_rlhf.data.tasks import TASKS
from lightning_rlhf.models import ModelConfig, load_reward_model, sequence_scores


class RewardError(ValueError):
    """A reward spec that cannot be loaded, or a scorer that failed or returned something other
    than one finite number per sample; the message is one line naming the spec."""


class RewardFunction(Protocol):
    """Anything that scores B (prompt, response) texts: returns a (B,) fp32 tensor."""

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor: ...


def _check_finite(scores: torch.Tensor, prompts: list[str], source: str) -> torch.Tensor:
    """Raise a one-line error naming the first sample whose score is NaN or infinite."""
    bad = torch.nonzero(~torch.isfinite(scores))
    if bad.numel():
        i = int(bad[0, 0])
        raise RewardError(
            f"reward {source}: non-finite score {scores[i].item()} for sample {i} "
            f"(prompt {prompts[i][:60]!r})"
        )
    return scores


def _check_lengths(prompts: list[str], responses: list[str], source: str) -> None:
    if len(prompts) != len(responses):
        raise RewardError(f"reward {source}: {len(prompts)} prompts but {len(responses)} responses")


class PythonReward:
    """A ``module:function`` scorer ``(prompts, responses) -> list[float]`` as a RewardFunction.

    Args:
        fn: the scorer; name: how errors refer to it (the spec string).
    """

    def __init__(self, fn: Callable[[list[str], list[str]], list[float]], name: str) -> None:
        self.fn = fn
        self.name = name

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        _check_lengths(prompts, responses, self.name)
        try:
            out = self.fn(list(prompts), list(responses))
        except Exception as err:  # noqa: BLE001 - the user's scorer: one line naming it
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise RewardError(f"reward {self.name}: raised {type(err).__name__}: {first}") from err
        scores = _as_scores(out, self.name)
        if scores.numel() != len(prompts):
            raise RewardError(
                f"reward {self.name}: returned {scores.numel()} scores for {len(prompts)} samples"
            )
        return _check_finite(scores, prompts, self.name)


def _as_scores(out: object, name: str) -> torch.Tensor:
    """A scorer's output (a list/tuple/array/tensor of numbers) as a flat fp32 tensor, or a
    one-line :class:`RewardError` saying what came back instead."""
    expected = "it must return one float per sample (a list of B numbers)"
    if isinstance(out, torch.Tensor | np.ndarray):
        out = (
            torch.as_tensor(out)
            if isinstance(out, torch.Tensor) or out.dtype.kind in "biuf"
            else out
        )
        if not isinstance(out, torch.Tensor) or out.dtype == torch.bool or out.is_complex():
            raise RewardError(f"reward {name}: returned an array of dtype {out.dtype}; {expected}")
        return out.detach().float().cpu().reshape(-1)
    if not isinstance(out, list | tuple):
        raise RewardError(f"reward {name}: returned {type(out).__name__} {_short(out)}; {expected}")
    for i, value in enumerate(out):
        if not _is_number(value):
            raise RewardError(
                f"reward {name}: returned a list holding {type(value).__name__} "
                f"{_short(value)} at index {i}; {expected}"
            )
    return torch.tensor([float(v) for v in out], dtype=torch.float32)


def _is_number(value: object) -> bool:
    """A real number: int, float, a numpy scalar or a one-element tensor (not a bool)."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _short(value: object, limit: int = 40) -> str:
    """A short one-line repr for error messages."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RewardModelScorer:
    """Score prompt + response texts with a ``num_labels=1`` sequence classifier.

    Texts are tokenised as the data module does for training the reward model: the prompt with
    special tokens (e.g. BOS), then the response without, then EOS; right-padded; the score is
    read at the last real token (``sequence_scores``). Runs in eval mode without gradients.

    Args:
        model: the classifier; tokenizer: ITS tokenizer; name: for error messages.
        device: where to score; batch_size: samples per forward pass.
        max_prompt_length, max_response_length: truncation (prompt keeps its end).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str = "reward model",
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        max_prompt_length: int = 1024,
        max_response_length: int = 1024,
    ) -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self._device = torch.device(device)
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.max_prompt_length = max_prompt_length
        self.max_response_length = max_response_length

    @property
    def device(self) -> torch.device:
        """Where inputs go (the compute device, also when FSDP2 keeps the weights on the CPU)."""
        return self._device

    def to(self, device: torch.device | str) -> RewardModelScorer:
        """Move the reward model (e.g. to the policy's device in ``setup``)."""
        self.model.to(device)
        self._device = torch.device(device)
        return self

    def encode(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) right-padded input_ids and attention_mask of prompt + response + EOS."""
        tok = self.tokenizer
        p = tokenize_prompts(prompts, tok, self.max_prompt_length)
        r = tokenize_responses(responses, tok, self.max_response_length)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return pad([a + b for a, b in zip(p, r)], pad_id, left=False)

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        _check_lengths(prompts, responses, self.name)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            ids, mask = self.encode(
                prompts[i : i + self.batch_size], responses[i : i + self.batch_size]
            )
            out.append(sequence_scores(self.model, ids.to(self.device), mask.to(self.device)))
        scores = torch.cat(out).float().cpu() if out else torch.zeros(0)
        return _check_finite(scores, prompts, self.name)


def reward_models(fn: RewardFunction) -> list[nn.Module]:
    """The reward models behind a reward function (each of a :class:`WeightedReward`'s), for
    sharding and releasing them; empty for Python scorers."""
    parts = list(fn.rewards.values()) if isinstance(getattr(fn, "rewards", None), dict) else [fn]
    return [p.model for p in parts if isinstance(getattr(p, "model", None), nn.Module)]


def _load_python(spec: str) -> PythonReward:
    """The scorer ``module:function`` names, or a one-line :class:`RewardError`."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RewardError(f"reward spec {spec!r}: expected 'module:function' or a directory")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is one line naming the spec
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise RewardError(
            f"reward spec {spec!r}: cannot import module {module_name!r}: "
            f"{type(err).__name__}: {first}"
        ) from err
    fn = getattr(module, attr, None)
    if fn is None:
        raise RewardError(f"reward spec {spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise RewardError(
            f"reward spec {spec!r}: {attr!r} is a {type(fn).__name__}, not a callable "
            "(prompts, responses) -> list[float]"
        )
    return PythonReward(fn, spec)


def _load_model(
    path: Path, tokenizer: PreTrainedTokenizerBase | None, **kwargs: object
) -> RewardModelScorer:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"reward spec {str(path)!r}: no config.json (not a model export)")
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise OSError(
                f"reward spec {str(path)!r}: no loadable tokenizer in the export "
                f"(pass tokenizer=): {str(err).splitlines()[0] if str(err) else err}"
            ) from err
    model = load_reward_model(
        ModelConfig(name_or_path=str(path)), tokenizer, require_trained_head=True
    )
    return RewardModelScorer(model, tokenizer, name=str(path), **kwargs)


def load_reward(
    spec: str,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    **options: object,
) -> RewardFunction:
    """Build a reward function from a spec string.

    Args:
        spec: "module:function" (a Python scorer returning list[float], e.g.
            "lightning_rlhf.data.tasks.arithmetic:reward"), "builtin:<task>" (that built-in
            task's reward: "builtin:arithmetic" is the same scorer) or a directory holding a
            sequence classifier export (``config.json`` + weights + usually its tokenizer).
        tokenizer: the reward model's tokenizer when the export has none (ignored for scorers).
        device, batch_size: where and in what chunks a reward model scores.
        options: more :class:`RewardModelScorer` keywords (max_prompt_length, ...).
    Returns:
        a callable ``(prompts, responses) -> (B,) fp32 tensor``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise RewardError(f"reward spec must be a non-empty string, got {spec!r}")
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_model(path, tokenizer, device=device, batch_size=batch_size, **options)
    looks_like_path = spec.startswith((".", "/", "~")) or ("/" in spec and ":" not in spec)
    if looks_like_path:
        raise FileNotFoundError(f"reward spec {spec!r}: no such directory")
    if spec.startswith(BUILTIN_PREFIX):
        return _load_builtin(spec)
    return _load_python(spec)


def _load_builtin(spec: str) -> PythonReward:
    """``builtin:<task>``: the reward of a built-in task (as ``data.dataset`` names the task)."""
    name = spec[len(BUILTIN_PREFIX) :]
    if name not in TASKS:
        raise RewardError(
            f"reward spec {spec!r}: unknown built-in task {name!r}; known: {', '.join(TASKS)}"
        )
    return PythonReward(importlib.import_module(f"lightning_rlhf.data.tasks.{name}").reward, spec)


RewardSpec = str | list[str]
"""What ``reward`` takes: one spec, or a list of specs summed with ``reward_weights``."""


def check_reward_weights(
    spec: RewardSpec, weights: list[float] | None, where: str
) -> list[float]:
    """The weight of each reward of ``spec`` (all 1.0 when ``weights`` is None), or a one-line
    :class:`RewardError` naming ``where``: an empty list, a spec that is not a non-empty string,
    a weights count that differs from the rewards count, a non-finite weight, or all zero."""
    specs = [spec] if isinstance(spec, str) else spec
    if not isinstance(specs, list | tuple) or not specs:
        raise RewardError(
            f"{where}: reward must be a spec or a non-empty list of specs, got {spec!r}"
        )
    for item in specs:
        if not isinstance(item, str) or not item.strip():
            raise RewardError(f"{where}: each reward must be a non-empty string, got {item!r}")
    if weights is None:
        return [1.0] * len(specs)
    if len(weights) != len(specs):
        raise RewardError(
            f"{where}: reward_weights has {len(weights)} weight(s) for {len(specs)} reward(s) "
            f"({', '.join(specs)}); give one weight per reward"
        )
    bad = [w for w in weights if not _is_number(w) or not math.isfinite(float(w))]
    if bad:
        raise RewardError(f"{where}: reward_weights must be finite numbers, got {bad[0]!r}")
    if all(float(w) == 0.0 for w in weights):
        raise RewardError(f"{where}: reward_weights are all 0, so the total reward is always 0")
    return [float(w) for w in weights]


def reward_names(specs: list[str]) -> list[str]:
    """Short names of reward specs, for logging: a scorer's function name, an export's directory
    name (its parent's when the directory is called ``export``); repeated names get ``_<i>``,
    their 1-based position in ``specs``."""
    names = []
    for spec in specs:
        path = Path(spec.rstrip("/\\"))
        if ":" in spec and not path.expanduser().is_dir():
            names.append(spec.rsplit(":", 1)[1])
        else:
            parts = path.parts
            names.append(parts[-2] if parts[-1] == "export" and len(parts) > 1 else parts[-1])
    return [f"{n}_{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


class WeightedReward:
    """Several rewards summed with weights: R = sum_i w_i R_i (TRL's ``reward_funcs`` with
    ``reward_weights``).

    Args:
        rewards: name -> reward function, in order (see :func:`reward_names`).
        weights: one weight per reward.
    """

    def __init__(self, rewards: dict[str, RewardFunction], weights: list[float]) -> None:
        self.rewards, self.weights = rewards, weights

    def parts(self, prompts: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
        """Each reward's (B,) fp32 scores, unweighted, by name."""
        return {name: fn(prompts, responses).float() for name, fn in self.rewards.items()}

    def total(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) sum_i w_i * parts[i]."""
        return sum(w * part for w, part in zip(self.weights, parts.values()))

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return self.total(self.parts(prompts, responses))


def load_rewards(
    spec: RewardSpec,
    weights: list[float] | None = None,
    *,
    where: str = "reward",
    **kwargs: object,
) -> WeightedReward:
    """Load every reward of ``spec`` (one spec or a list, see :func:`load_reward`; ``kwargs`` go
    to it) as a :class:`WeightedReward` with ``weights`` (checked by
    :func:`check_reward_weights`, all 1.0 when None). One spec is a sum of one term."""
    checked = check_reward_weights(spec, weights, where)
    specs = [spec] if isinstance(spec, str) else list(spec)
    functions = [load_reward(s, **kwargs) for s in specs]
    return WeightedReward(dict(zip(reward_names(specs), functions)), checked)


MIN_STD = 1e-3  # running stds below this are treated as 1 by normalize_rewards


class RunningMoments:
    """Running mean and standard deviation of a stream of rewards (Chan et al. parallel merge).

    ``std`` is the unbiased (n - 1) sample standard deviation of everything seen, and 1.0
    before two values have been seen. In multi-process training, gather the rewards of all
    ranks before ``update`` so every rank holds the same moments.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from the mean

    @property
    def var(self) -> float:
        return self._m2 / (self.count - 1) if self.count > 1 else 1.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add a batch of values. x: (B,) (any shape; all entries count); must be finite."""
        x = x.detach().double().reshape(-1)
        if x.numel() == 0:
            return
        if not bool(torch.isfinite(x).all()):
            raise ValueError("RunningMoments.update: non-finite value in the batch")
        n, mean = x.numel(), float(x.mean())
        m2 = float((x - mean).square().sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self._m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self._m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self._m2 = float(state["m2"])


def normalize_rewards(
    rewards: torch.Tensor,
    moments: RunningMoments | None,
    *,
    clip: float | None,
    scale_only: bool = True,
    update: bool = True,
) -> torch.Tensor:
    """Normalise by running moments, then clip (trlx / P3O: divide by a running std, clip ±10).

    A running std below ``MIN_STD`` (e.g. a first batch of equal rewards) counts as 1: dividing
    by it would blow the rewards up by orders of magnitude.

    Args:
        rewards: (B,) scores.
        moments: running statistics, first updated with ``rewards`` when ``update``; None
            skips normalisation.
        clip: clip the (normalised) rewards to [-clip, clip]; None: no clipping.
        scale_only: divide by the running std only (keeps the sign and any per-prompt
            structure); False also subtracts the running mean.
    Returns:
        (B,) fp32.
    """
    r = rewards.detach().float()
    if moments is not None:
        if update:
            moments.update(r)
        std = moments.std if moments.std >= MIN_STD else 1.0
        r = r / std if scale_only else (r - moments.mean) / std
    if clip is not None:
        r = r.clamp(-clip, clip)
    return r
