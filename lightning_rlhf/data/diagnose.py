"""Why a local data file could not be read, in one line naming the file, row and column.

``datasets`` reports a bad local file as "An error occurred while generating the dataset", a
position inside one of its read blocks, or a ``UnicodeDecodeError`` naming no file. These helpers
re-read the files with Python's own parsers, only after a load has failed (the happy path never pays
for them), and say what is wrong where: an empty file, a CSV with a header and no rows, a byte that
is not UTF-8, a JSON Lines line that is not JSON or not an object, a CSV record with too many
fields, CSV files with different headers. :func:`exact_json_values` recovers the values of a JSON
column that ``datasets`` stored as ``Json`` because it mixes types; :func:`locate_row` turns a row
of a dataset read from several files into the file and its own row.

Rows count records from 0 (the header of a CSV and blank JSON Lines lines are not rows), as in every
other data error; JSON Lines errors add the 1-based line number an editor shows.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from collections.abc import Iterator
from typing import Any

CHUNK = 1 << 20  # bytes read at a time when looking for the first byte that is not UTF-8
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def read_failure(files: list[str], kind: str) -> str | None:
    """The first problem found in ``files`` (all of builder ``kind``: json/csv/parquet) as a
    one-line message naming the file, or ``None`` when these checks find nothing."""
    for path in files:
        message = file_problem(path, kind)
        if message:
            return message
    if kind == "csv":
        return csv_header_mismatch(files)
    return None


def file_problem(path: str, kind: str) -> str | None:
    """Empty file, non-UTF-8 byte, bad JSON Lines line or CSV record in ``path``, or ``None``."""
    if os.path.getsize(path) == 0:
        return f"{path}: the file is empty"
    if kind == "parquet":
        return parquet_problem(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(UTF16_BOMS):
        return f"{path}: the file is UTF-16 encoded; save it as UTF-8"
    bad = first_invalid_utf8(path)
    if bad is not None:
        return _encoding_message(path, kind, bad)
    with open(path, encoding="utf-8-sig", newline="") as f:
        text = f.read()
    if not text.strip():
        return f"{path}: the file holds only whitespace"
    if kind == "csv":
        return csv_problem(path, text)
    if text.lstrip().startswith(("[", "{")) and _is_one_json_document(text):
        return None  # a JSON list/object: datasets' own message (if any) stands
    return jsonl_problem(path, text)


def parquet_problem(path: str) -> str | None:
    """A parquet file that cannot be opened or holds no rows, or ``None``."""
    import pyarrow.parquet as pq

    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as err:  # noqa: BLE001 - reported as one line
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"{path}: not a readable parquet file ({first})"
    return f"{path}: the parquet file has no rows" if rows == 0 else None


def first_invalid_utf8(path: str) -> tuple[int, int] | None:
    """``(byte offset, byte value)`` of the first byte of ``path`` that is not valid UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes read so far
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                return offset - pending + err.start, err.object[err.start]
            if not chunk:
                break
            offset += len(chunk)
    return None


def _encoding_message(path: str, kind: str, bad: tuple[int, int]) -> str:
    """``path: row R, column C: byte 0x.. is not UTF-8 ...`` for the byte at ``bad``."""
    offset, byte = bad
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    where = _bad_text_position(text, kind)
    return (
        f"{path}: {where}byte 0x{byte:02x} (file offset {offset}) is not valid UTF-8; the file "
        "looks latin-1/cp1252 encoded: save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def _has_bad_bytes(value: Any) -> bool:
    """Whether a value decoded with ``surrogateescape`` holds an undecodable byte."""
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, list):
        return any(_has_bad_bytes(v) for v in value)
    if isinstance(value, dict):
        return any(_has_bad_bytes(v) for v in value.values())
    return False


def _bad_text_position(text: str, kind: str) -> str:
    """``"row R, column 'c': "`` (or less, when unknown) of the first undecodable byte."""
    if kind == "csv":
        records = csv.reader(io.StringIO(text, newline=""))
        header = next(records, [])
        for j, name in enumerate(header):
            if _has_bad_bytes(name):
                return f"header, column {j}: "
        for row, record in enumerate(records):
            for j, value in enumerate(record):
                if _has_bad_bytes(value):
                    column = header[j] if j < len(header) else j
                    return f"row {row}, column {column!r}: "
        return ""
    if text.lstrip().startswith("[") and _is_one_json_document(text):
        for row, record in enumerate(json.loads(text)):
            if _has_bad_bytes(record):
                return f"row {row}{_bad_column(record)}: "
        return ""
    for row, line_no, line in _jsonl_lines(text):
        if _has_bad_bytes(line):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            return f"row {row} (line {line_no}){_bad_column(record)}: "
    return ""


def _bad_column(record: Any) -> str:
    """``", column 'c'"`` for the first field of a JSON record holding an undecodable byte."""
    if not isinstance(record, dict):
        return ""
    columns = [k for k, v in record.items() if _has_bad_bytes(v)]
    return f", column {columns[0]!r}" if columns else ""


def _jsonl_lines(text: str) -> Iterator[tuple[int, int, str]]:
    """``(row, 1-based line number, line)`` of every non-blank line."""
    row = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield row, line_no, line
            row += 1


def _is_one_json_document(text: str) -> bool:
    """Whether ``text`` parses as a single JSON value (a list or object file, not JSON Lines)."""
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def jsonl_problem(path: str, text: str) -> str | None:
    """The first JSON Lines line of ``path`` that is not a JSON object, or ``None``."""
    for row, line_no, line in _jsonl_lines(text):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            return (
                f"{path}: row {row} (line {line_no}): not valid JSON ({err.msg}: column "
                f"{err.colno}); JSON Lines needs one object per line"
            )
        if not isinstance(record, dict):
            return (
                f"{path}: row {row} (line {line_no}): expected a JSON object per line, "
                f"got {type(record).__name__}"
            )
    return None


def csv_problem(path: str, text: str) -> str | None:
    """A CSV with a header and no rows, or a record with more fields than its header."""
    records = csv.reader(io.StringIO(text, newline=""))
    header = next(records, [])
    rows = 0
    for row, record in enumerate(records):
        rows += 1
        if len(record) > len(header):
            return (
                f"{path}: row {row}: {len(record)} fields but the header has {len(header)} "
                f"({header}); quote values that contain commas"
            )
    if rows == 0:
        return f"{path}: the CSV has a header ({header}) but no rows"
    return None


def csv_header_mismatch(files: list[str]) -> str | None:
    """Two CSV files of one dataset with different headers, or ``None``."""
    headers = []
    for path in files:
        with open(path, encoding="utf-8-sig", newline="") as f:
            headers.append(next(csv.reader(f), []))
    for path, header in zip(files[1:], headers[1:]):
        if header != headers[0]:
            return f"{path}: CSV header {header} differs from {headers[0]} of {files[0]}"
    return None


def locate_row(files: list[str], row: int) -> tuple[str, int] | None:
    """``(file, row within it)`` of row ``row`` of the dataset made of ``files`` in order."""
    for path in files:
        count = count_rows(path)
        if row < count:
            return path, row
        row -= count
    return None


def count_rows(path: str) -> int:
    """Records in one .json/.jsonl/.csv/.parquet file, counted as ``datasets`` reads them."""
    extension = os.path.splitext(path)[1]
    if extension == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        text = f.read()
    if extension == ".csv":
        return max(0, sum(1 for _ in csv.reader(io.StringIO(text, newline=""))) - 1)
    if text.lstrip().startswith("[") and _is_one_json_document(text):
        return len(json.loads(text))
    return sum(1 for _ in _jsonl_lines(text))


def exact_json_values(files: list[str], column: str) -> list[Any]:
    """The values of ``column`` in every record of the JSON / JSON Lines ``files``, in order,
    exactly as written (``None`` where a record lacks it).

    ``datasets`` stores a column that mixes types (say text and numbers) as ``Json`` and decodes
    a text value that parses as JSON (``"2"``) as that JSON (the number 2), so the row holding
    the real number cannot be found from the dataset; this re-reads the files.
    """
    values: list[Any] = []
    for path in files:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
        if text.lstrip().startswith("[") and _is_one_json_document(text):
            records = json.loads(text)
        else:
            records = [json.loads(line) for _, _, line in _jsonl_lines(text)]
        values.extend(r.get(column) if isinstance(r, dict) else None for r in records)
    return values
