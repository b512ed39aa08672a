"""``RLHFDataModule``: the one LightningDataModule every algorithm shares.

Its typed ``__init__`` is its config schema. ``setup`` loads the source (local files, a hub name or
a built-in task), maps and validates columns, tokenises once with ``Dataset.map`` and splits off a
validation set; the dataloaders collate with :class:`lightning_rlhf.data.collate.RLHFCollator`.
Training rows come in shuffled epochs, or drawn by weight when an algorithm (A-LoL) sets
``sample_weights``; either way a run resumed mid-epoch continues the same stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal

import datasets
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from lightning_rlhf.checks import check_range
from lightning_rlhf.data.collate import RLHFCollator, tokenize_dataset
from lightning_rlhf.data.formats import (
    BUILTIN_PREFIX,
    DataError,
    Format,
    builtin_records,
    get_builtin_task,
    load_source,
    map_columns,
    validate,
)
from lightning_rlhf.data.priority import PrioritySampler

log = logging.getLogger(__name__)


class EpochSeededSampler(RandomSampler):
    """A random permutation drawn from ``seed + epoch``: the same order per epoch on every run
    and after a resume (Lightning calls ``set_epoch``; being a ``RandomSampler`` it is also
    recognised as shuffled when Lightning swaps in a ``DistributedSampler``).

    ``resume_offset``, read at the first iteration only, gives the rows of the current epoch
    already trained on: a run resumed mid-epoch continues the permutation where it stopped
    (Lightning restores its batch counters but restarts a plain sampler from the top)."""

    def __init__(
        self, data_source: Any, seed: int = 0, resume_offset: Callable[[], int] | None = None
    ) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0
        self.resume_offset = resume_offset

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.data_source), generator=generator).tolist()
        skip = self.resume_offset() if self.resume_offset is not None else 0
        self.resume_offset = None  # later epochs start at their beginning
        return iter(order[skip:])


class EpochSeededDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (permutation from ``seed + epoch``, this rank's every
    ``num_replicas``-th row) that, like :class:`EpochSeededSampler`, skips the rows this rank
    already trained on after a mid-epoch resume (Lightning's own would restart the epoch)."""

    def __init__(
        self, dataset: Any, seed: int, resume_offset: Callable[[], int], **replicas: Any
    ) -> None:
        super().__init__(dataset, shuffle=True, seed=seed, **replicas)  # num_replicas, rank
        self.resume_offset: Callable[[], int] | None = resume_offset

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())
        skip = self.resume_offset() if self.resume_offset is not None else 0
        self.resume_offset = None
        return iter(order[skip:])


class RLHFDataModule(LightningDataModule):
    """Prompts, (prompt, response, reward), preference pairs or ranked lists for every algorithm.

    Args:
        tokenizer: a Hugging Face tokenizer path or hub name, or ``builtin:<task>``.
        dataset: local file(s) (``.json/.jsonl/.parquet/.csv``; a glob, a directory or a comma
            list), a hub dataset name, or ``builtin:<task>``.
        format: ``prompt`` (online RL), ``response`` (SFT, offline RL), ``pair`` (DPO, reward
            models) or ``ranked`` (PRO); see :class:`RLHFCollator` for the batch of each.
        task_options: keyword arguments of the built-in task (its ``seed`` defaults to ``seed``).
        num_train, num_val: record counts drawn from a built-in task.
        ranked_k: candidates per prompt drawn from a built-in task for the ranked format.
        columns: our field name -> the dataset's column name (e.g. ``{prompt: question}``).
        hh_format: the response/chosen/rejected/responses fields hold Anthropic HH transcripts
            (``\\n\\nHuman: ...\\n\\nAssistant: ...``); the prompt is cut out of them.
        chat_template: render prompts with the tokenizer's chat template.
        max_prompt_length: prompt tokens kept (the last ones; prompts are left-truncated).
        max_response_length: response tokens kept, EOS included (responses are right-truncated).
        batch_size, eval_batch_size: rows per training / validation batch (eval defaults to train).
        val_split: share of a non-builtin source held out for validation (seeded), unless
            ``val_dataset`` names a separate source; 0 means no validation set.
        split: the split of a hub dataset to load.
        seed: seed of the validation split, the training order and built-in tasks.
        num_workers: dataloader worker processes.
        drop_empty: drop (count and warn about) rows with an empty prompt/response instead of
            raising.
    """

    def __init__(
        self,
        tokenizer: str = "builtin:arithmetic",
        dataset: str = "builtin:arithmetic",
        format: Literal["prompt", "response", "pair", "ranked"] = "response",
        task_options: dict[str, Any] | None = None,
        num_train: int = 20000,
        num_val: int = 512,
        ranked_k: int = 4,
        columns: dict[str, str] | None = None,
        hh_format: bool = False,
        chat_template: bool = False,
        max_prompt_length: int = 64,
        max_response_length: int = 16,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        val_split: float = 0.05,
        split: str = "train",
        val_dataset: str | None = None,
        seed: int = 0,
        num_workers: int = 0,
        drop_empty: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer_name, self.dataset, self.format = tokenizer, dataset, format
        self.task_options, self.num_train, self.num_val = task_options, num_train, num_val
        self.ranked_k, self.columns, self.hh_format = ranked_k, columns, hh_format
        self.chat_template, self.drop_empty = chat_template, drop_empty
        self.max_prompt_length, self.max_response_length = max_prompt_length, max_response_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.val_split, self.split, self.val_source = val_split, split, val_dataset
        self.seed, self.num_workers = seed, num_workers
        self.with_prompts = False  # algorithms that need left-padded prompts set this in setup
        self._tokenizer: Any = None
        self.train_dataset: datasets.Dataset | None = None
        self.val_dataset: datasets.Dataset | None = None
        self.sample_weights: torch.Tensor | None = None  # (N,) see set_sample_weights
        self._saved_sampler: dict[str, Any] | None = None  # a checkpoint's sampler identity
        self._check_options()

    def _check_options(self) -> None:
        """One-line errors for option values that cannot work."""
        if self.max_prompt_length < 1 or self.max_response_length < 1:
            raise DataError(
                f"max_prompt_length and max_response_length must be >= 1, got "
                f"{self.max_prompt_length}, {self.max_response_length}"
            )
        if not 0.0 <= self.val_split < 1.0:
            raise DataError(f"val_split must lie in [0, 1), got {self.val_split}")
        if self.format == "ranked" and self.ranked_k < 2:
            raise DataError(f"ranked_k must be >= 2, got {self.ranked_k}")
        check_range("data", "batch_size", self.batch_size, ge=1)
        check_range("data", "eval_batch_size", self.eval_batch_size, ge=1)
        check_range("data", "num_workers", self.num_workers, ge=0)

    # ------------------------------------------------------------------------- tokenizer

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loaded once); a missing pad token falls back to EOS, logged once."""
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def _load_tokenizer(self) -> Any:
        """AutoTokenizer (path or hub name) or the tokenizer of ``builtin:<task>``."""
        name = self.tokenizer_name
        if name.startswith(BUILTIN_PREFIX):
            from lightning_rlhf.data.tasks import get_tokenizer

            try:
                tok = get_tokenizer(name[len(BUILTIN_PREFIX) :])
            except (KeyError, ValueError) as err:
                raise DataError(f"tokenizer {name!r}: {err}") from err
        else:
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(name)
            except (OSError, ValueError) as err:
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise DataError(f"tokenizer {name!r}: could not load: {first}") from err
        if tok.pad_token_id is None:
            if tok.eos_token is None:
                raise DataError(f"tokenizer {name!r} has neither a pad nor an EOS token")
            tok.pad_token = tok.eos_token
            log.info("tokenizer %r has no pad token; padding with EOS %r", name, tok.eos_token)
        return tok

    # ------------------------------------------------------------------------- datasets

    def setup(self, stage: str | None = None) -> None:
        """Load, validate, tokenise and split the data once (later calls do nothing)."""
        if self.train_dataset is not None:
            return
        if self.dataset.startswith(BUILTIN_PREFIX):
            train, val = self._builtin_splits()
        else:
            train = self._prepare(load_source(self.dataset, self.split), self.dataset)
            if self.val_source is not None:
                val = self._prepare(load_source(self.val_source, self.split), self.val_source)
            else:
                train, val = self._split(train)
        # assigned together, only once everything has succeeded
        self.train_dataset, self.val_dataset = _add_index(train), _add_index(val)

    def _builtin_splits(self) -> tuple[datasets.Dataset, datasets.Dataset | None]:
        """Training and validation records of a built-in task, from RNG offsets 0 and 1
        (no validation set when ``num_val`` is 0)."""
        if self.num_train < 1 or self.num_val < 0:
            raise DataError(
                f"{self.dataset}: need num_train >= 1 and num_val >= 0, got "
                f"{self.num_train}, {self.num_val}"
            )
        options = {"seed": self.seed, **(self.task_options or {})}
        task = get_builtin_task(self.dataset[len(BUILTIN_PREFIX) :], options)
        splits: list[datasets.Dataset | None] = []
        for offset, n in ((0, self.num_train), (1, self.num_val)):
            raw = builtin_records(task, self.format, n, self.ranked_k, offset) if n else None
            source = f"{self.dataset}[offset={offset}]"
            splits.append(None if raw is None else self._prepare(raw, source, builtin=True))
        return splits[0], splits[1]

    def prompt_dataset(self, source: str) -> datasets.Dataset:
        """The prompts of ``source`` (a file, glob, directory or hub dataset, read as
        ``dataset`` is, in the "prompt" format: a ``prompt`` field, renamed by ``columns``'
        prompt entry, cut from HH transcripts with ``hh_format``), checked and tokenised as the
        training prompts are, with an ``index`` column: a held-out set of the user's own, e.g.
        for ``callbacks.PromptEval``."""
        columns = {k: v for k, v in (self.columns or {}).items() if k == "prompt"}
        raw = load_source(source, self.split)
        return _add_index(self._prepare(raw, source, format="prompt", columns=columns))

    def _prepare(
        self,
        raw: datasets.Dataset,
        source: str,
        builtin: bool = False,
        format: Format | None = None,
        columns: dict[str, str] | None = None,
    ) -> datasets.Dataset:
        """Map columns, validate rows and tokenise one source (in ``format``, by default the
        module's, with ``columns``, by default the module's)."""
        fmt = format or self.format
        columns = self.columns if columns is None else columns
        columns, hh = (None, False) if builtin else (columns, self.hh_format)
        mapped, fields = map_columns(raw, fmt, columns, hh_format=hh, source=source)
        clean, dropped = validate(
            mapped, fmt, fields, hh_format=hh, drop_empty=self.drop_empty, source=source
        )
        if dropped:
            rank_zero_warn(
                f"{source}: dropped {dropped} of {len(mapped)} rows with an empty "
                "prompt or response (drop_empty=True)"
            )
        return tokenize_dataset(
            clean,
            self.tokenizer,
            fmt,
            max_prompt_length=self.max_prompt_length,
            max_response_length=self.max_response_length,
            chat_template=self.chat_template,
            source=source,
        )

    def _split(self, ds: datasets.Dataset) -> tuple[datasets.Dataset, datasets.Dataset | None]:
        """A seeded train/validation split (``val_split`` of the rows, at least one)."""
        if self.val_split == 0:
            return ds, None
        if len(ds) < 2:
            raise DataError(
                f"{self.dataset}: {len(ds)} row(s) cannot be split for validation; "
                "set val_split: 0 or give val_dataset"
            )
        n_val = min(len(ds) - 1, max(1, round(self.val_split * len(ds))))
        parts = ds.train_test_split(test_size=n_val, seed=self.seed, keep_in_memory=True)
        return parts["train"], parts["test"]

    # ------------------------------------------------------------------------- loaders

    @property
    def collate_fn(self) -> RLHFCollator:
        """The collator of this module's format (reads ``with_prompts`` when called for)."""
        return RLHFCollator(self.format, self.tokenizer.pad_token_id, self.with_prompts)

    def set_sample_weights(self, weights: torch.Tensor | None) -> None:
        """Draw training rows i.i.d. with P(i) proportional to ``weights``
        (:class:`PrioritySampler`: rows with weight <= 0 are never drawn, an epoch is as many
        draws as positive rows) instead of shuffled epochs; None goes back to shuffling. Any
        algorithm may set it before its first training batch (A-LoL does in ``on_fit_start``).

        Args:
            weights: (N,) one finite weight per training row, in ``train_dataset`` order.
        """
        if weights is not None:
            rows = len(self._require(self.train_dataset, "train"))
            weights = torch.as_tensor(weights, dtype=torch.float64).flatten()
            if weights.numel() != rows:
                raise ValueError(
                    f"sample_weights: {weights.numel()} weights for {rows} training rows"
                )
        self.sample_weights = weights

    def train_dataloader(self) -> DataLoader:
        """Training batches: shuffled by ``seed + epoch``, or drawn by ``sample_weights``."""
        ds = self._require(self.train_dataset, "train")
        resume = self._rows_done_this_epoch
        if self.sample_weights is not None:
            sampler = self._weighted_sampler(resume)
            if self._saved_sampler is not None:
                sampler.check_resumable(self._saved_sampler)
            return self._loader(ds, self.batch_size, sampler)
        sampler = EpochSeededSampler(ds, self.seed, resume_offset=resume)
        replicas = self.trainer.distributed_sampler_kwargs if self.trainer else None
        if replicas and replicas.get("num_replicas", 1) > 1:  # resumable under DDP / FSDP2 too
            sampler = EpochSeededDistributedSampler(ds, self.seed, resume, **replicas)
        return self._loader(ds, self.batch_size, sampler)

    def _weighted_sampler(self, resume: Callable[[], int] | None) -> PrioritySampler:
        """This rank's share of the ``sample_weights`` stream."""
        trainer = self.trainer
        return PrioritySampler(
            self.sample_weights,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            seed=self.seed,
            resume_offset=resume,
        )

    def state_dict(self) -> dict[str, Any]:
        """The weighted sampler's identity (checked on resume); the stream position itself comes
        from the fit loop's restored batch counter."""
        if self.sample_weights is None:
            return {}
        return {"weighted_sampler": self._weighted_sampler(None).identity()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved_sampler = state_dict.get("weighted_sampler")

    def _rows_done_this_epoch(self) -> int:
        """Training rows of the current epoch already consumed (non-zero after a mid-epoch
        resume; from the fit loop's restored batch counter)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return trainer.fit_loop.epoch_loop.batch_progress.current.completed * self.batch_size

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in order (an empty list when there is no validation set)."""
        if self.val_dataset is None and self.train_dataset is not None:
            return []
        ds = self._require(self.val_dataset, "validation")
        return self._loader(ds, self.eval_batch_size, None)

    def _require(self, ds: datasets.Dataset | None, name: str) -> datasets.Dataset:
        """``ds``, or a one-line error when ``setup`` has not run."""
        if ds is None:
            raise RuntimeError(f"RLHFDataModule: no {name} dataset; call setup() first")
        return ds

    def _loader(self, ds: datasets.Dataset, batch_size: int, sampler: Any) -> DataLoader:
        """A DataLoader over ``ds`` with this module's collator and workers."""
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


def _add_index(ds: datasets.Dataset | None) -> datasets.Dataset | None:
    """``ds`` with an ``index`` column: each row's position in its split."""
    if ds is None:
        return None
    if "index" in ds.column_names:
        ds = ds.remove_columns("index")
    return ds.add_column("index", list(range(len(ds))))
