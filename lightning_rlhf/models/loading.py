"""Build or load Hugging Face models from a typed config: hub name, local path, or ``from_config``.

A :class:`ModelConfig` is what every algorithm's YAML names for its policy (and reward model):
either ``name_or_path`` (``from_pretrained``) or ``config`` (a tiny model built from scratch, as
the tests and the demo do), with dtype, gradient checkpointing and optional LoRA through ``peft``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lightning_rlhf.io import atomic_directory

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraConfig:
    """LoRA adapter settings (needs ``peft``); "all-linear" adapts every linear layer."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass
class ModelConfig:
    """Which model to use and how to hold it.

    Args:
        name_or_path: a local directory or a Hugging Face hub name (``from_pretrained``).
        config: build from scratch instead: ``{"model_type": "llama", "hidden_size": 128, ...}``;
            vocabulary size and special-token ids come from the tokenizer.
        dtype: parameter dtype.
        gradient_checkpointing: trade compute for activation memory.
        lora: train a LoRA adapter instead of the full model (the reference is then the base
            model with the adapter disabled, so no second copy is held).
        trust_remote_code: passed to ``from_pretrained``.
        attn_implementation: e.g. "sdpa", "eager", "flash_attention_2"; None lets HF choose.
    """

    name_or_path: str | None = None
    config: dict | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    extra: dict = field(default_factory=dict)


#: what to run first when an export the shipped configs start from is missing
MAKES_EXPORT = {
    "sft": "run SFT first: python -m lightning_rlhf fit --config configs/sft/arithmetic.yaml",
    "reward_model": "train the reward model first: python -m lightning_rlhf fit --config "
    "configs/reward_model/arithmetic.yaml",
}


def check_model_source(cfg: ModelConfig) -> None:
    """One source (``name_or_path`` or ``config``), and a local path that exists."""
    if (cfg.name_or_path is None) == (cfg.config is None):
        raise ValueError(
            "model: set exactly one of `name_or_path` (load) or `config` (build from scratch)"
        )
    if cfg.name_or_path is not None:
        check_model_path(cfg.name_or_path)


def check_model_path(path: str) -> None:
    """A local-looking ``name_or_path`` must exist; a missing ``<stage>/export`` says which run
    makes it. Cheap: the CLI calls it before anything is built or any data read."""
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1
    if looks_local and not Path(path).expanduser().exists():
        hint = MAKES_EXPORT.get(Path(path).parent.name) if Path(path).name == "export" else None
        raise FileNotFoundError(
            f"model: name_or_path {path!r} does not exist (a local path was given)"
            + (f": {hint} (or python -m lightning_rlhf demo)" if hint else "")
        )


def _from_config(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, auto_cls, **kwargs
) -> PreTrainedModel:
    options = dict(cfg.config)
    model_type = options.pop("model_type", None)
    if model_type is None:
        raise ValueError("model.config needs a `model_type` (e.g. llama, gpt2, qwen2)")
    hf_config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **options,
        **kwargs,
    )
    if cfg.attn_implementation:
        hf_config._attn_implementation = cfg.attn_implementation
    return auto_cls.from_config(hf_config, dtype=DTYPES[cfg.dtype])


def _load(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    auto_cls,
    *,
    require_all_weights: bool = False,
    **kwargs,
) -> PreTrainedModel:
    check_model_source(cfg)
    if cfg.config is not None:
        model = _from_config(cfg, tokenizer, auto_cls, **kwargs)
    else:
        extra = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
        try:
            loaded = auto_cls.from_pretrained(
                cfg.name_or_path,
                dtype=DTYPES[cfg.dtype],
                trust_remote_code=cfg.trust_remote_code,
                output_loading_info=require_all_weights,
                ignore_mismatched_sizes=require_all_weights,  # reported below, in one line
                **extra,
                **kwargs,
                **cfg.extra,
            )
        except OSError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise OSError(f"model: could not load {cfg.name_or_path!r}: {first}") from err
        model = loaded[0] if require_all_weights else loaded
        if require_all_weights:
            _check_all_weights_loaded(cfg.name_or_path, loaded[1])
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora is not None:
        model = _add_lora(model, cfg.lora)
    return model


def _add_lora(model: PreTrainedModel, lora: LoraConfig) -> nn.Module:
    try:
        import peft
    except ImportError as err:  # pragma: no cover - exercised only without peft
        raise ImportError("model.lora needs `peft`: pip install 'lightning-rlhf[lora]'") from err
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="SEQ_CLS" if "SequenceClassification" in type(model).__name__ else "CAUSAL_LM",
    )
    return peft.get_peft_model(model, config)


def load_causal_lm(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
    """Return the causal LM ``cfg`` names (a ``peft`` model when ``cfg.lora`` is set)."""
    return _load(cfg, tokenizer, AutoModelForCausalLM)


class UntrainedWeightsError(ValueError):
    """A saved model whose weights do not fill the loaded class (a policy export given as a
    reward model, or a classifier with more than one output): ``transformers`` would start the
    missing or mis-shaped parameters at random."""


def _check_all_weights_loaded(path: str, info: dict) -> None:
    """Refuse a reward-model export whose score head is missing or mis-shaped (one line)."""
    missing = sorted(info["missing_keys"])
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UntrainedWeightsError(
            f"reward model {path!r} has no trained score head (its weights lack "
            f"{', '.join(missing[:3])}{more}; transformers would initialise them at random): is it "
            "a policy export? Give a reward-model export (trained with "
            "lightning_rlhf.algorithms.RewardModel) or a scorer 'module:function'"
        )
    if info["mismatched_keys"]:
        key, saved, wanted = sorted(info["mismatched_keys"])[0]
        raise UntrainedWeightsError(
            f"reward model {path!r}: {key} has shape {list(saved)} but a reward model's has "
            f"{list(wanted)} (one score per sequence, num_labels=1)"
        )


def load_reward_model(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, *, require_trained_head: bool = False
) -> nn.Module:
    """Return a scalar-head sequence classifier (``num_labels=1``): ours, or any HF one.

    Loading a causal-LM checkpoint here (e.g. the SFT policy, to start reward-model training)
    keeps its backbone and adds a freshly initialised score head; with ``require_trained_head``
    (scoring with the model as it is) that is refused with :class:`UntrainedWeightsError`.
    """
    quiet = contextlib.nullcontext() if require_trained_head else _quiet_head_swap_report()
    with quiet:
        return _load(
            cfg,
            tokenizer,
            AutoModelForSequenceClassification,
            require_all_weights=require_trained_head,
            num_labels=1,
        )


#: a row of transformers' load report: ``key | STATUS | ...``
_REPORT_ROW = re.compile(r"^\s*(\S+)\s*\|\s*(UNEXPECTED|MISSING|MISMATCH\w*)\b")


def _is_head_swap_report(message: str) -> bool:
    """Whether a transformers load report lists only what starting a reward model from a causal
    LM must give: the LM head unused (UNEXPECTED) and the new score head (MISSING)."""
    rows = [m.groups() for m in map(_REPORT_ROW.match, message.splitlines()) if m]
    expected = {"UNEXPECTED": "lm_head", "MISSING": "score"}
    return (
        "LOAD REPORT" in message
        and bool(rows)
        and all(key.startswith(expected.get(status, "\0")) for key, status in rows)
    )


@contextlib.contextmanager
def _quiet_head_swap_report() -> Iterator[None]:
    """Drop transformers' 10-line load report when it says only that (any other report shows)."""
    logger = logging.getLogger("transformers.modeling_utils")
    keep = lambda record: not _is_head_swap_report(record.getMessage())
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The underlying ``PreTrainedModel`` of a peft wrapper (adapters stay active), or ``model``
    itself: the one place that looks through peft wrappers."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A detached, eval-mode, gradient-free deep copy (the reference policy)."""
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def export_pretrained(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    directory: str | Path,
    *,
    merge_lora: bool = True,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` and ``tokenizer`` with ``save_pretrained``; ``transformers`` loads them back.

    A LoRA model is merged into its base first when ``merge_lora`` (else the adapter alone is
    saved, loadable with ``peft``). The directory is written to a temporary sibling and swapped
    in only once complete (``lightning_rlhf.io.atomic_directory``), so a crash never leaves a
    half-written export behind and the previous export stays until then. ``state_dict``
    replaces the model's own (the full weights gathered from FSDP2 shards, see
    ``lightning_rlhf.strategies``).
    """
    directory = Path(directory)
    if merge_lora and hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    borrowed = pad_is_borrowed_eos(tokenizer)
    with atomic_directory(directory) as tmp, _without_pad(model, tokenizer, borrowed):
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    return directory


def pad_is_borrowed_eos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer`` pads with EOS only because it was loaded without a pad token (the data
    module's fallback): its pad token is EOS and the settings it was created with
    (``init_kwargs``) name no pad token. A tokenizer saved with EOS as its own pad token keeps it.
    """
    created_with = tokenizer.init_kwargs.get("pad_token")
    return (
        created_with is None
        and tokenizer.pad_token is not None
        and str(tokenizer.pad_token) == str(tokenizer.eos_token)
    )


@contextlib.contextmanager
def _without_pad(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, active: bool
) -> Iterator[None]:
    """While saving (when ``active``): no pad token in the tokenizer and no ``pad_token_id`` in the
    model's config and generation config, so the export declares none, as its source did (a
    collator that masks pad ids out of the loss would otherwise mask EOS); restored afterwards."""
    if not active:
        yield
        return
    configs = [getattr(unwrap_peft(model), name, None) for name in ("config", "generation_config")]
    configs = [c for c in configs if c is not None and hasattr(c, "pad_token_id")]
    saved = [c.pad_token_id for c in configs], tokenizer.pad_token
    try:
        for config in configs:
            config.pad_token_id = None
        tokenizer.pad_token = None
        yield
    finally:
        for config, pad_id in zip(configs, saved[0]):
            config.pad_token_id = pad_id
        tokenizer.pad_token = saved[1]
