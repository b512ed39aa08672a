"""Dataset formats: loading sources, mapping columns to our fields, validating rows, Anthropic HH
transcripts and chat templates.

Every public function either returns a clean ``datasets.Dataset`` with exactly the fields of its
format (``FORMAT_FIELDS``) or raises a one-line :class:`DataError` naming the file, row and column.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
from collections.abc import Callable
from typing import Any, Literal

import datasets

from lightning_rlhf.data.diagnose import exact_json_values, locate_row, read_failure

Format = Literal["prompt", "response", "pair", "ranked"]

# format -> (required fields, optional fields); names are ours, ``columns`` maps them to the data's
FORMAT_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "prompt": (("prompt",), ()),
    "response": (("prompt", "response"), ("reward",)),
    "pair": (("prompt", "chosen", "rejected"), ("chosen_reward", "rejected_reward")),
    "ranked": (("prompt", "responses"), ("rewards",)),
}
# fields holding a full HH transcript when hh_format=True (the prompt is cut out of them)
HH_FIELDS = {
    "prompt": ("prompt",),
    "response": ("response",),
    "pair": ("chosen", "rejected"),
    "ranked": ("responses",),
}
HH_MARKER = "\n\nAssistant:"
BUILTIN_PREFIX = "builtin:"
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(ValueError):
    """Bad input data; the message is one line naming the file, row and column at fault."""


def _one_line(text: Any, limit: int = 60) -> str:
    """A short single-line repr of ``text`` for error messages."""
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- loading sources


def resolve_files(spec: str) -> list[str] | None:
    """Local files named by ``spec`` (a file, a glob, a directory or a comma list of those).

    Returns ``None`` when ``spec`` does not look local (then it is a hub dataset name); raises
    :class:`DataError` for a local-looking path that does not exist or matches nothing.
    """
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    looks_local = any(
        os.path.exists(p)
        or any(c in p for c in "*?[")
        or os.path.splitext(p)[1] in FILE_BUILDERS
        or p.startswith((".", "/", "~"))
        for p in parts
    )
    if not looks_local:
        return None
    files: list[str] = []
    for part in parts:
        part = os.path.expanduser(part)
        if os.path.isdir(part):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(part)
                for name in names
                if os.path.splitext(name)[1] in FILE_BUILDERS
            )
            if not found:
                raise DataError(f"{part}: directory holds no {'/'.join(FILE_BUILDERS)} files")
        elif any(c in part for c in "*?["):
            found = sorted(glob.glob(part, recursive=True))
            if not found:
                raise DataError(f"{part}: no file matches this pattern")
        elif os.path.isfile(part):
            found = [part]
        else:
            raise DataError(f"{part}: no such file")
        files.extend(found)
    return files


def local_files(source: str) -> list[str] | None:
    """The local files behind a source name of an error message, or ``None`` (a built-in task,
    a hub dataset, or a name that is no file)."""
    if source.startswith(BUILTIN_PREFIX):
        return None
    try:
        return resolve_files(source)
    except DataError:
        return None


def load_source(spec: str, split: str = "train") -> datasets.Dataset:
    """Load local files (``.json/.jsonl/.parquet/.csv``; glob, directory or comma list) or a hub
    dataset ``split`` as a ``datasets.Dataset`` with the source's own columns."""
    files = resolve_files(spec)
    if files is None:
        try:
            return datasets.load_dataset(spec, split=split)
        except Exception as err:  # noqa: BLE001 - re-raised as one line, naming the source
            raise DataError(
                f"{spec}: could not load hub dataset split {split!r}: "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            ) from err
    kind = _file_kind(spec, files)
    for path in files:
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: the file is empty")
    try:
        ds = _load_files(kind, files)
    except Exception as err:  # noqa: BLE001 - re-raised as one line, naming the file
        raise DataError(read_failure(files, kind) or _read_error(spec, err)) from err
    if len(ds) == 0:
        raise DataError(read_failure(files, kind) or f"{spec}: no rows")
    return ds


def _file_kind(spec: str, files: list[str]) -> str:
    """The one ``datasets`` builder (json/parquet/csv) reading every file of ``files``."""
    extensions = sorted({os.path.splitext(f)[1] or "(none)" for f in files})
    unsupported = [e for e in extensions if e not in FILE_BUILDERS]
    if unsupported:
        raise DataError(
            f"{spec}: unsupported file type {', '.join(unsupported)}; "
            f"use {'/'.join(FILE_BUILDERS)} files"
        )
    kinds = {FILE_BUILDERS[e] for e in extensions}
    if len(kinds) != 1:
        raise DataError(
            f"{spec}: mixes file types {', '.join(extensions)}; give files of one type "
            "(e.g. a glob such as dir/*.jsonl)"
        )
    return kinds.pop()


def _load_files(kind: str, files: list[str]) -> datasets.Dataset:
    """``datasets.load_dataset(kind, data_files=files)``; JSON strings are checked to be UTF-8
    (Arrow's JSON reader does not check, and a bad byte would surface much later)."""
    options = _csv_options(files[0]) if kind == "csv" else {}
    ds = datasets.load_dataset(kind, data_files=files, split="train", **options)
    if kind == "json":
        ds.data.table.validate(full=True)
    return ds


def _read_error(spec: str, err: Exception) -> str:
    """``spec: could not read: <the innermost error's first line>``."""
    while err.__cause__ is not None and str(err).startswith("An error occurred while generating"):
        err = err.__cause__  # datasets' DatasetGenerationError wraps the real error
    first = str(err).splitlines()[0] if str(err) else ""
    return f"{spec}: could not read: {type(err).__name__}: {first}"


def _csv_options(path: str) -> dict[str, Any]:
    """Read every CSV column as text, empty cells as "" (so "42" stays a string and an empty
    cell is reported as empty; rewards are parsed later); a UTF-8 byte-order mark is dropped."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    features = datasets.Features({name: datasets.Value("string") for name in header})
    return {"features": features, "keep_default_na": False, "encoding": "utf-8-sig"}


def get_builtin_task(name: str, options: dict[str, Any] | None = None) -> Any:
    """The built-in task ``name`` (from ``builtin:<name>``) built with ``options``."""
    from lightning_rlhf.data.tasks import get_task

    try:
        return get_task(name, **(options or {}))
    except (KeyError, ValueError) as err:
        raise DataError(f"builtin:{name}: unknown builtin task or bad task_options: {err}") from err


def builtin_records(task: Any, format: Format, n: int, k: int, offset: int) -> datasets.Dataset:
    """``n`` records of ``task`` for ``format`` (response -> scored, pair -> pairs, ranked ->
    ranked(k), prompt -> prompts), drawn from the RNG stream ``offset``."""
    if format == "response":
        rows = task.scored(n, offset=offset)
    elif format == "pair":
        rows = task.pairs(n, offset=offset)
    elif format == "ranked":
        rows = task.ranked(n, k, offset=offset)
    else:
        rows = task.prompts(n, offset=offset)
    return datasets.Dataset.from_list(list(rows))


# ----------------------------------------------------------------------------- column mapping


def map_columns(
    ds: datasets.Dataset,
    format: Format,
    columns: dict[str, str] | None = None,
    *,
    hh_format: bool = False,
    source: str = "dataset",
) -> tuple[datasets.Dataset, dict[str, str]]:
    """Select and rename the dataset's columns to the fields of ``format``.

    Returns the dataset (only our fields) and ``field -> original column`` for error messages.
    With ``hh_format`` the prompt is cut from the transcripts, so no prompt column is needed.
    """
    columns = dict(columns or {})
    required, optional = FORMAT_FIELDS[format]
    unknown = sorted(set(columns) - set(required) - set(optional))
    if unknown:
        raise DataError(
            f"{source}: columns maps unknown field(s) {unknown}; the {format!r} format "
            f"has fields {list(required + optional)}"
        )
    if hh_format and format != "prompt":
        required = tuple(f for f in required if f != "prompt")
    found: dict[str, str] = {}
    for field in required + optional:
        column = columns.get(field, field)
        if column in ds.column_names:
            found[field] = column
        elif field in required or field in columns:
            raise DataError(
                f"{source}: missing column {column!r} for field {field!r} of the {format!r} "
                f"format; columns are {ds.column_names}; "
                f"map one with columns: {{{field}: <column>}}{_layout_hint(ds)}"
            )
    pair_rewards = sorted({"chosen_reward", "rejected_reward"} & set(found))
    if format == "pair" and len(pair_rewards) == 1:
        raise DataError(
            f"{source}: pair rewards need both chosen_reward and rejected_reward "
            f"columns, found only {pair_rewards}; columns are {ds.column_names}"
        )
    ds = ds.select_columns(list(dict.fromkeys(found.values())))
    ds = _exact_mixed_columns(ds, found, source)
    ds = ds.map(
        lambda b: {f: b[c] for f, c in found.items()},
        batched=True,
        remove_columns=ds.column_names,
        keep_in_memory=True,
    )
    return ds, found


def _exact_mixed_columns(
    ds: datasets.Dataset, found: dict[str, str], source: str
) -> datasets.Dataset:
    """Replace the ``Json`` columns ``datasets`` makes of JSON columns mixing types (text and
    numbers, say) by the values as written, so that rows are checked as they are in the file.

    ``datasets`` decodes a text value of such a column that parses as JSON (``"2"``) as that JSON
    (the number 2), so without this a file with text in rows 0-3 and a number in row 4 was
    reported at row 0. Text columns must hold text (else an error at the first other row);
    rewards are kept as text and list columns as JSON text, which the row checks parse.
    """
    mixed = [c for c in ds.column_names if _holds_json(ds.features[c])]
    files = local_files(source) if mixed else None
    if not files or any(FILE_BUILDERS.get(os.path.splitext(f)[1]) != "json" for f in files):
        return ds
    for column in mixed:
        fields = {f for f, c in found.items() if c == column}
        values = exact_json_values(files, column)
        if fields & {"responses", "rewards"}:
            values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
        elif fields & {"reward", "chosen_reward", "rejected_reward"}:
            values = [v if v is None or isinstance(v, str) else repr(v) for v in values]
        else:
            for row, value in enumerate(values):
                if value is not None and not isinstance(value, str):
                    what = f"expected text, got {type(value).__name__} {_one_line(value)}"
                    raise row_error(source, row, column, what)
        ds = ds.remove_columns(column).add_column(column, values)
    return ds


def _holds_json(feature: Any) -> bool:
    """Whether a ``datasets`` feature is, or nests, ``Json`` (a column that mixes types)."""
    if isinstance(feature, getattr(datasets, "Json", ())):
        return True
    if isinstance(feature, dict):
        return any(_holds_json(f) for f in feature.values())
    inner = getattr(feature, "feature", None)
    return inner is not None and _holds_json(inner)


def _layout_hint(ds: datasets.Dataset) -> str:
    """A hint for a missing column: a one-object JSON file, or a CSV split on another
    delimiter (the one column's name holds ``;`` or a tab)."""
    names = ds.column_names
    if len(ds) == 1 and any(isinstance(ds[0][c], list) for c in names):
        return (
            "; the file is one JSON object holding lists: give JSON Lines (one object per "
            "line) or a list of objects"
        )
    if len(names) == 1 and any(d in names[0] for d in ";\t|"):
        return "; the file looks separated by something else than commas: CSV must use ','"
    return ""


# ----------------------------------------------------------------------------- HH transcripts


def parse_hh(transcript: str) -> tuple[str, str]:
    """Split an Anthropic HH transcript into (prompt, response).

    The prompt is everything up to and including the last ``"\\n\\nAssistant:"``; the response is
    the rest without its leading spaces. Raises ``ValueError`` when there is no Assistant turn.
    """
    cut = transcript.rfind(HH_MARKER)
    if cut < 0:
        raise ValueError(f"no {HH_MARKER!r} turn in transcript {_one_line(transcript)}")
    cut += len(HH_MARKER)
    return transcript[:cut], transcript[cut:].lstrip(" ")


# ----------------------------------------------------------------------------- row validation


def row_error(source: str, row: int, column: str | None, what: str) -> DataError:
    """``source: row R, column 'c': what``; for a source of several files, the file and its row
    come first (``a.jsonl: row 3, column 'c' (row 10 of data/*.jsonl): what``)."""
    where = f", column {column!r}" if column else ""
    files = local_files(source)
    found = locate_row(files, row) if files and len(files) > 1 else None
    if found is not None:
        return DataError(f"{found[0]}: row {found[1]}{where} (row {row} of {source}): {what}")
    return DataError(f"{source}: row {row}{where}: {what}")


class _RowChecker:
    """Batched ``Dataset.map`` function normalising rows of one format (see :func:`validate`)."""

    def __init__(
        self, format: Format, fields: dict[str, str], hh_format: bool, drop_empty: bool, source: str
    ) -> None:
        self.format, self.fields, self.hh, self.drop_empty = format, fields, hh_format, drop_empty
        self.source = source
        self.dropped = 0
        self.num_candidates: int | None = None

    def fail(self, row: int, field: str | None, what: str) -> DataError:
        """A one-line error naming the source, row and (original) column."""
        return row_error(self.source, row, self.fields.get(field, field) if field else None, what)

    def reward(self, row: int, field: str, value: Any) -> float:
        """``value`` as a finite float, or a :class:`DataError` naming the row."""
        try:
            reward = float(value)
        except (TypeError, ValueError):
            raise self.fail(row, field, f"reward is missing or not a number ({value!r})") from None
        if not math.isfinite(reward):
            raise self.fail(row, field, f"reward is {reward} (NaN/inf)")
        return reward

    def text(self, row: int, field: str, value: Any) -> str | None:
        """``value`` as a non-empty string; ``None`` (drop the row) or an error when empty."""
        if value is not None and not isinstance(value, str):
            columnar = row == 0 and isinstance(value, list)  # {"prompt": [...], ...}: one row
            hint = "; give one object per row, not one object of column lists" if columnar else ""
            raise self.fail(row, field, f"expected text, got {type(value).__name__}{hint}")
        if value is None or not value.strip():
            if self.drop_empty:
                return None
            raise self.fail(row, field, f"empty {field} (set drop_empty: true to drop such rows)")
        return value

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        """Normalise one batch; dropped rows are left out (and counted in ``self.dropped``)."""
        out: dict[str, list] = {f: [] for f in self.out_fields}
        for i, row in enumerate(indices):
            record = self.row(row, {f: batch[f][i] for f in batch})
            if record is None:
                self.dropped += 1
                continue
            for f in self.out_fields:
                out[f].append(record[f])
        return out

    @property
    def out_fields(self) -> list[str]:
        """The fields every normalised record has (``prompt`` always, rewards only if given)."""
        required, optional = FORMAT_FIELDS[self.format]
        return ["prompt"] + [f for f in required[1:]] + [f for f in optional if f in self.fields]

    def row(self, row: int, rec: dict[str, Any]) -> dict[str, Any] | None:
        """One normalised record, ``None`` to drop it, or a :class:`DataError`."""
        if self.hh:
            rec = self.split_hh(row, rec)
        return getattr(self, f"row_{self.format}")(row, rec)

    def split_hh(self, row: int, rec: dict[str, Any]) -> dict[str, Any]:
        """Cut the shared prompt out of the transcript fields of one record."""
        rec = dict(rec)
        prompts = set()
        for field in HH_FIELDS[self.format]:
            values = rec.get(field)
            many = isinstance(values, list)
            parsed = []
            for value in values if many else [values]:
                if value is not None and not isinstance(value, str):
                    raise self.fail(row, field, f"expected text, got {type(value).__name__}")
                try:
                    prompt, response = parse_hh(value or "")
                except ValueError as err:
                    raise self.fail(row, field, str(err)) from None
                prompts.add(prompt)
                parsed.append(response)
            rec[field] = parsed if many else parsed[0]
        if len(prompts) > 1:
            raise self.fail(
                row,
                None,
                f"HH transcripts in {list(HH_FIELDS[self.format])} do not "
                "share the same prompt (everything up to the last Assistant turn)",
            )
        rec["prompt"] = prompts.pop()
        return rec

    def row_prompt(self, row: int, rec: dict[str, Any]) -> dict[str, Any] | None:
        """A prompt record: a non-empty prompt."""
        prompt = self.text(row, "prompt", rec["prompt"])
        return None if prompt is None else {"prompt": prompt}

    def row_response(self, row: int, rec: dict[str, Any]) -> dict[str, Any] | None:
        """A response record: prompt, response and (if given) a finite reward."""
        prompt = self.text(row, "prompt", rec["prompt"])
        response = self.text(row, "response", rec["response"])
        if prompt is None or response is None:
            return None
        out = {"prompt": prompt, "response": response}
        if "reward" in self.fields:
            out["reward"] = self.reward(row, "reward", rec["reward"])
        return out

    def row_pair(self, row: int, rec: dict[str, Any]) -> dict[str, Any] | None:
        """A pair record: prompt, chosen != rejected, and (if given) both rewards."""
        texts = [self.text(row, f, rec[f]) for f in ("prompt", "chosen", "rejected")]
        if None in texts:
            return None
        prompt, chosen, rejected = texts
        if chosen == rejected:
            raise self.fail(row, "rejected", f"chosen == rejected ({_one_line(chosen)})")
        out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        for field in ("chosen_reward", "rejected_reward"):
            if field in self.fields:
                out[field] = self.reward(row, field, rec[field])
        return out

    def row_ranked(self, row: int, rec: dict[str, Any]) -> dict[str, Any] | None:
        """A ranked record: prompt, >= 2 responses (same count in every row), sorted best first
        by reward when rewards are given."""
        prompt = self.text(row, "prompt", rec["prompt"])
        responses = self.as_list(row, "responses", rec["responses"])
        if len(responses) < 2:
            raise self.fail(
                row, "responses", f"a ranked list needs >= 2 responses, got {len(responses)}"
            )
        texts = [self.text(row, "responses", r) for r in responses]
        if prompt is None or None in texts:
            return None
        if self.num_candidates is None:
            self.num_candidates = len(texts)
        elif len(texts) != self.num_candidates:
            raise self.fail(
                row,
                "responses",
                f"{len(texts)} responses but earlier rows have "
                f"{self.num_candidates}; every row needs the same number",
            )
        out: dict[str, Any] = {"prompt": prompt, "responses": texts}
        if "rewards" in self.fields:
            rewards = [
                self.reward(row, "rewards", r) for r in self.as_list(row, "rewards", rec["rewards"])
            ]
            if len(rewards) != len(texts):
                what = f"{len(rewards)} rewards for {len(texts)} responses"
                raise self.fail(row, "rewards", what)
            order = sorted(range(len(texts)), key=lambda j: -rewards[j])
            out["responses"] = [texts[j] for j in order]
            out["rewards"] = [rewards[j] for j in order]
        return out

    def as_list(self, row: int, field: str, value: Any) -> list:
        """A list cell; a JSON-encoded string (as CSV files hold lists) is decoded."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise self.fail(row, field, "expected a list (or a JSON list string)") from None
        if not isinstance(value, list):
            raise self.fail(row, field, f"expected a list, got {type(value).__name__}")
        return value


def validate(
    ds: datasets.Dataset,
    format: Format,
    fields: dict[str, str],
    *,
    hh_format: bool = False,
    drop_empty: bool = False,
    source: str = "dataset",
) -> tuple[datasets.Dataset, int]:
    """Check and normalise mapped rows (see :func:`map_columns`); returns (dataset, rows dropped).

    Splits HH transcripts, decodes JSON list strings, sorts ranked lists best first, and raises a
    one-line :class:`DataError` naming the row and column for empty text (unless ``drop_empty``),
    NaN/inf/missing rewards, ranked lists shorter than 2 or of unequal length, chosen == rejected.
    """
    checker = _RowChecker(format, fields, hh_format, drop_empty, source)
    ds = ds.map(
        checker,
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        keep_in_memory=True,
        load_from_cache_file=False,
    )
    if len(ds) == 0:
        raise DataError(f"{source}: no rows left ({checker.dropped} dropped as empty)")
    return ds, checker.dropped


# ----------------------------------------------------------------------------- chat templates


def render_chat_prompts(prompts: list[str], tokenizer: Any) -> list[str]:
    """Render each prompt as a one-turn user chat with the generation prompt appended.

    ``tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
    tokenize=False)``; a one-line :class:`DataError` when the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"chat_template: true but tokenizer {type(tokenizer).__name__} "
            f"{getattr(tokenizer, 'name_or_path', '')!r} has no chat template"
        )
    render: Callable[..., str] = tokenizer.apply_chat_template
    return [
        render([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
