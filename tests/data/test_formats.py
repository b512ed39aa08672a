"""Tests of lightning_rlhf.data.formats: HH parsing, file resolution, column mapping, row
validation (every bad-input error names its row/column/file) and chat templates."""

import json
import math

import datasets
import pytest

from lightning_rlhf.data.formats import (
    DataError,
    load_source,
    map_columns,
    parse_hh,
    render_chat_prompts,
    resolve_files,
    validate,
)
from lightning_rlhf.data.tasks import get_tokenizer


def prepare(rows: list[dict], format: str, columns: dict | None = None, **kw) -> list[dict]:
    """Map and validate ``rows``; returns the clean rows."""
    ds, fields = map_columns(
        datasets.Dataset.from_list(rows),
        format,
        columns,
        hh_format=kw.get("hh_format", False),
        source="data.jsonl",
    )
    clean, _ = validate(ds, format, fields, source="data.jsonl", **kw)
    return clean.to_list()


def assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    """The error is a one-line DataError mentioning every one of ``parts``."""
    msg = str(err.value)
    assert isinstance(err.value, DataError) and isinstance(err.value, ValueError)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"


# ----------------------------------------------------------------------------- HH transcripts


def test_parse_hh_single_turn():
    prompt, response = parse_hh("\n\nHuman: What is 2+2?\n\nAssistant: It is 4.")
    assert prompt == "\n\nHuman: What is 2+2?\n\nAssistant:"
    assert response == "It is 4."


def test_parse_hh_multi_turn_cuts_at_last_assistant():
    t = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: add 1+1\n\nAssistant:  2"
    prompt, response = parse_hh(t)
    assert prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: add 1+1\n\nAssistant:"
    assert response == "2"  # leading spaces stripped
    assert prompt + "  " + response == t


def test_parse_hh_without_assistant_turn_raises():
    with pytest.raises(ValueError, match="Assistant"):
        parse_hh("\n\nHuman: only a question")


def test_hh_rows_split_into_prompt_and_responses():
    p = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c?\n\nAssistant:"
    rows = [{"chosen": p + " yes", "rejected": p + " no"}]
    (row,) = prepare(rows, "pair", hh_format=True)
    assert row == {"prompt": p, "chosen": "yes", "rejected": "no"}
    (row,) = prepare([{"response": p + " ok", "reward": 1}], "response", hh_format=True)
    assert row == {"prompt": p, "response": "ok", "reward": 1.0}


def test_hh_pair_with_different_prompts_names_the_row():
    rows = [
        {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: a\n\nAssistant: y"},
        {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},
    ]
    with pytest.raises(DataError) as err:
        prepare(rows, "pair", hh_format=True)
    assert_one_line(err, "data.jsonl", "row 1", "same prompt")


def test_hh_transcript_that_is_not_text_names_row_and_column():
    with pytest.raises(DataError) as err:
        prepare([{"text": 7}], "response", {"response": "text"}, hh_format=True)
    assert_one_line(err, "row 0", "'text'", "expected text, got int")


def test_hh_transcript_without_assistant_names_row_and_column():
    rows = [{"text": "\n\nHuman: a\n\nAssistant: x"}, {"text": "no turns here"}]
    with pytest.raises(DataError) as err:
        prepare(rows, "response", {"response": "text"}, hh_format=True)
    assert_one_line(err, "row 1", "'text'", "Assistant")


# ----------------------------------------------------------------------------- files


def test_resolve_files_glob_dir_comma_and_hub_names(tmp_path):
    for name in ("a.jsonl", "b.jsonl", "notes.txt"):
        (tmp_path / name).write_text('{"prompt": "1+1="}\n')
    assert resolve_files(str(tmp_path)) == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    assert resolve_files(str(tmp_path / "*.jsonl")) == resolve_files(str(tmp_path))
    spec = f"{tmp_path / 'b.jsonl'}, {tmp_path / 'a.jsonl'}"
    assert resolve_files(spec) == [str(tmp_path / "b.jsonl"), str(tmp_path / "a.jsonl")]
    assert resolve_files("Anthropic/hh-rlhf") is None  # not local: a hub name


@pytest.mark.parametrize("spec", ["missing.jsonl", "nowhere/*.parquet", "./no_such_dir/"])
def test_missing_files_name_the_path(tmp_path, spec):
    path = str(tmp_path / spec)
    with pytest.raises(DataError) as err:
        load_source(path)
    assert_one_line(err, str(tmp_path))


def test_directory_without_data_files(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError) as err:
        load_source(str(tmp_path))
    assert_one_line(err, str(tmp_path), "no")


def test_unreadable_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{this is not json")
    with pytest.raises(DataError) as err:
        load_source(str(bad))
    assert_one_line(err, "bad.json", "row 0 (line 1): not valid JSON")


def _write(path, data: str | bytes):
    """Write ``data`` (text as UTF-8) to ``path``; returns its name as a string."""
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(path)


def _jsonl_rows(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_csv_with_utf8_bom_header_is_read(tmp_path):
    path = _write(tmp_path / "bom.csv", "\ufeffprompt,response\n1+1=,2\n2+2=,4\n")
    ds = load_source(path)
    assert ds.column_names == ["prompt", "response"] and ds["prompt"] == ["1+1=", "2+2="]


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("empty.jsonl", "", "empty.jsonl: the file is empty"),
        ("empty.csv", "", "empty.csv: the file is empty"),
        ("blank.jsonl", "\n  \n", "blank.jsonl: the file holds only whitespace"),
        ("header.csv", "prompt,response\n", "header.csv: the CSV has a header (['prompt', "),
        ("bom_header.csv", "\ufeffprompt\n", "bom_header.csv: the CSV has a header (['prompt'])"),
    ],
)
def test_empty_and_header_only_files(tmp_path, name, data, expected):
    with pytest.raises(DataError) as err:
        load_source(_write(tmp_path / name, data))
    assert_one_line(err, str(tmp_path), expected)


def test_empty_file_among_others_is_named(tmp_path):
    _write(tmp_path / "a.jsonl", '{"prompt": "x"}\n')
    _write(tmp_path / "b.jsonl", "")
    with pytest.raises(DataError) as err:
        load_source(str(tmp_path / "*.jsonl"))
    assert_one_line(err, "b.jsonl: the file is empty")


@pytest.mark.parametrize(
    "name, data, where",
    [
        (
            "latin1.jsonl",
            b'{"prompt": "a", "response": "b"}\n\n{"prompt": "a", "response": "caf\xe9"}\n',
            "latin1.jsonl: row 1 (line 3), column 'response': byte 0xe9 (file offset 66)",
        ),
        (
            "latin1.csv",
            b"prompt,response\na,b\nc,d\ncaf\xe9,b\n",
            "latin1.csv: row 2, column 'prompt': byte 0xe9 (file offset 27)",
        ),
        (
            "latin1.json",
            b'[{"prompt": "a", "response": "\xe9"}]',
            "latin1.json: row 0, column 'response': byte 0xe9",
        ),
    ],
)
def test_invalid_utf8_names_file_row_and_column(tmp_path, name, data, where):
    with pytest.raises(DataError) as err:
        load_source(_write(tmp_path / name, data))
    assert_one_line(err, where, "is not valid UTF-8", "save it as UTF-8")


def test_invalid_utf8_past_the_first_chunk(tmp_path, monkeypatch):
    """The byte offset is exact when the bad byte lies in a later read chunk."""
    import lightning_rlhf.data.diagnose as diagnose

    monkeypatch.setattr(diagnose, "CHUNK", 7)
    data = ("prompt\n" + "ab\n" * 5).encode() + b"\xc3(\n"  # a broken 2-byte character
    path = _write(tmp_path / "late.csv", data)
    assert diagnose.first_invalid_utf8(path) == (data.index(b"\xc3("), 0xC3)
    with pytest.raises(DataError) as err:
        load_source(path)
    assert_one_line(err, "row 5, column 'prompt': byte 0xc3")


def test_utf16_file(tmp_path):
    with pytest.raises(DataError) as err:
        load_source(_write(tmp_path / "u16.csv", "prompt\nhi\n".encode("utf-16")))
    assert_one_line(err, "u16.csv: the file is UTF-16 encoded; save it as UTF-8")


def test_number_in_text_column_is_reported_at_its_row(tmp_path):
    """Text that looks like a number ("1") in rows 0-3 and a number in row 4: ``datasets`` stores
    the mixed column as Json and decodes "1" as 1, which used to be reported at row 0."""
    rows = [{"prompt": f"1+{i}=", "response": str(i + 1)} for i in range(6)]
    rows[4]["response"] = 5
    path = _write(tmp_path / "num.jsonl", _jsonl_rows(rows))
    with pytest.raises(DataError) as err:
        map_columns(load_source(path), "response", source=path)
    assert_one_line(err, "num.jsonl: row 4, column 'response': expected text, got int 5")


def test_mixed_json_columns_keep_text_that_looks_like_json(tmp_path):
    """A mixed reward column ("2", 1.5) and a mixed ranked list are read as written, so the
    text "1" stays text and the bad row is the one named."""
    rows = [
        {"prompt": "p", "response": "true", "reward": "2"},
        {"prompt": "q", "response": "1", "reward": 1.5},
    ]
    path = _write(tmp_path / "mixed.jsonl", _jsonl_rows(rows))
    ds, fields = map_columns(load_source(path), "response", source=path)
    clean, _ = validate(ds, "response", fields, source=path)
    assert clean["response"] == ["true", "1"] and clean["reward"] == [2.0, 1.5]
    ranked = [{"prompt": "p", "responses": ["1", "2"]}, {"prompt": "p", "responses": ["1", 2]}]
    path = _write(tmp_path / "ranked.jsonl", _jsonl_rows(ranked))
    ds, fields = map_columns(load_source(path), "ranked", source=path)
    with pytest.raises(DataError) as err:
        validate(ds, "ranked", fields, source=path)
    assert_one_line(err, "ranked.jsonl: row 1, column 'responses': expected text, got int")


@pytest.mark.parametrize(
    "name, data, expected",
    [
        (
            "garbage.jsonl",
            '{"prompt": "a"}\n{"prompt": "b"} x\n',
            "garbage.jsonl: row 1 (line 2): not valid JSON (Extra data: column 17)",
        ),
        (
            "list_row.jsonl",
            '{"prompt": "a"}\n[1, 2]\n',
            "list_row.jsonl: row 1 (line 2): expected a JSON object per line, got list",
        ),
        (
            "ragged.csv",
            "prompt,response\na,b\nc,d,e,f\n",
            "ragged.csv: row 1: 4 fields but the header has 2",
        ),
        ("empty.parquet", None, "empty.parquet: the parquet file has no rows"),
        ("broken.parquet", b"PAR1 not really", "broken.parquet: not a readable parquet file"),
    ],
)
def test_unreadable_records_name_file_and_row(tmp_path, name, data, expected):
    if data is None:
        datasets.Dataset.from_dict(
            {"prompt": []}, features=datasets.Features({"prompt": datasets.Value("string")})
        ).to_parquet(str(tmp_path / name))
        path = str(tmp_path / name)
    else:
        path = _write(tmp_path / name, data)
    with pytest.raises(DataError) as err:
        load_source(path)
    assert_one_line(err, expected)


def test_csv_files_with_different_headers(tmp_path):
    _write(tmp_path / "a.csv", "prompt,response\nx,y\n")
    _write(tmp_path / "b.csv", "question,answer\nx,y\n")
    with pytest.raises(DataError) as err:
        load_source(str(tmp_path / "*.csv"))
    assert_one_line(err, "b.csv: CSV header ['question', 'answer'] differs from ['prompt', ")


def test_mixed_and_unsupported_file_types(tmp_path):
    _write(tmp_path / "a.jsonl", '{"prompt": "x"}\n')
    _write(tmp_path / "b.csv", "prompt\nx\n")
    with pytest.raises(DataError) as err:
        load_source(str(tmp_path))
    assert_one_line(err, "mixes file types .csv, .jsonl; give files of one type")
    with pytest.raises(DataError) as err:
        load_source(_write(tmp_path / "c.jsonl.gz", b"\x1f\x8b"))
    assert_one_line(err, "unsupported file type .gz; use .json/.jsonl/.parquet/.csv files")


def test_column_oriented_json_file(tmp_path):
    path = _write(tmp_path / "columns.json", json.dumps({"prompt": ["a", "c"], "response": ["b"]}))
    ds, fields = map_columns(load_source(path), "response", source=path)
    with pytest.raises(DataError) as err:
        validate(ds, "response", fields, source=path)
    assert_one_line(err, "row 0, column 'prompt': expected text, got list; give one object per row")


def test_json_list_file_is_read(tmp_path):
    """A .json file holding a list of objects (not JSON Lines) is read as rows."""
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]
    ds = load_source(_write(tmp_path / "list.json", json.dumps(rows)))
    assert ds.to_list() == rows


@pytest.mark.parametrize(
    "name, data, hint",
    [
        ("object.json", '{"data": [{"prompt": "a"}]}', "one JSON object holding lists"),
        ("semicolon.csv", "prompt;response\na;b\n", "separated by something else than commas"),
    ],
)
def test_missing_column_hints_at_the_file_layout(tmp_path, name, data, hint):
    path = _write(tmp_path / name, data)
    with pytest.raises(DataError) as err:
        map_columns(load_source(path), "response", source=path)
    assert_one_line(err, name, "missing column 'prompt'", hint)


# ----------------------------------------------------------------------------- column mapping


def test_column_mapping_renames_and_keeps_only_fields():
    rows = [{"question": "1+1=", "answer": "2", "score": 0.5, "extra": 7}]
    (row,) = prepare(
        rows, "response", {"prompt": "question", "response": "answer", "reward": "score"}
    )
    assert row == {"prompt": "1+1=", "response": "2", "reward": 0.5}


def test_optional_reward_absent_is_fine():
    (row,) = prepare([{"prompt": "p", "response": "r"}], "response")
    assert row == {"prompt": "p", "response": "r"}


def test_missing_column_lists_columns_and_suggests_mapping():
    with pytest.raises(DataError) as err:
        prepare([{"question": "q", "answer": "a"}], "response")
    assert_one_line(err, "data.jsonl", "'prompt'", "['question', 'answer']", "columns: {prompt:")


def test_misnamed_mapped_column():
    with pytest.raises(DataError) as err:
        prepare([{"q": "q", "response": "a"}], "response", {"prompt": "question"})
    assert_one_line(err, "missing column 'question'", "['q', 'response']")


def test_explicitly_mapped_optional_column_must_exist():
    with pytest.raises(DataError) as err:
        prepare([{"prompt": "q", "response": "a"}], "response", {"reward": "score"})
    assert_one_line(err, "'score'", "reward")


def test_unknown_field_in_columns():
    with pytest.raises(DataError) as err:
        prepare([{"prompt": "q", "response": "a"}], "response", {"answer": "response"})
    assert_one_line(err, "unknown field", "answer")


def test_pair_needs_both_rewards_or_neither():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_reward": 1.0}]
    with pytest.raises(DataError) as err:
        prepare(rows, "pair")
    assert_one_line(err, "chosen_reward", "rejected_reward")


# ----------------------------------------------------------------------------- row validation


@pytest.mark.parametrize(
    ("rows", "format", "column"),
    [
        (
            [{"prompt": "a", "response": "b"}, {"prompt": "  ", "response": "b"}],
            "response",
            "prompt",
        ),
        (
            [{"prompt": "a", "response": "b"}, {"prompt": "a", "response": ""}],
            "response",
            "response",
        ),
        (
            [{"prompt": "a", "response": "b"}, {"prompt": "a", "response": None}],
            "response",
            "response",
        ),
        ([{"prompt": "a"}, {"prompt": ""}], "prompt", "prompt"),
        (
            [
                {"prompt": "a", "chosen": "x", "rejected": "y"},
                {"prompt": "a", "chosen": "x", "rejected": ""},
            ],
            "pair",
            "rejected",
        ),
        (
            [{"prompt": "a", "responses": ["x", "y"]}, {"prompt": "a", "responses": ["x", ""]}],
            "ranked",
            "responses",
        ),
    ],
)
def test_empty_text_names_row_and_column(rows, format, column):
    with pytest.raises(DataError) as err:
        prepare(rows, format)
    assert_one_line(err, "data.jsonl", "row 1", f"column '{column}'", "empty", "drop_empty")


def test_empty_text_error_names_the_original_column():
    rows = [{"q": "", "a": "b"}]
    with pytest.raises(DataError) as err:
        prepare(rows, "response", {"prompt": "q", "response": "a"})
    assert_one_line(err, "row 0", "column 'q'")


def test_drop_empty_drops_and_counts():
    rows = [
        {"prompt": "a", "response": "b"},
        {"prompt": "", "response": "b"},
        {"prompt": "c", "response": " "},
        {"prompt": "d", "response": "e"},
    ]
    ds, fields = map_columns(datasets.Dataset.from_list(rows), "response")
    clean, dropped = validate(ds, "response", fields, drop_empty=True)
    assert dropped == 2
    assert clean["prompt"] == ["a", "d"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_bad_reward_names_the_row(bad):
    rows = [
        {"prompt": "a", "response": "b", "reward": 1.0},
        {"prompt": "a", "response": "b", "reward": 0.5},
        {"prompt": "a", "response": "c", "reward": bad},
    ]
    with pytest.raises(DataError) as err:
        prepare(rows, "response")
    assert_one_line(err, "row 2", "column 'reward'", "reward")


def test_non_numeric_reward_names_the_row():
    rows = [
        {"prompt": "a", "response": "b", "reward": "1.5"},
        {"prompt": "a", "response": "b", "reward": "n/a"},
    ]
    with pytest.raises(DataError) as err:
        prepare(rows, "response")
    assert_one_line(err, "row 1", "column 'reward'", "'n/a'")


def test_bad_reward_inside_ranked_list():
    rows = [{"prompt": "a", "responses": ["x", "y"], "rewards": [1.0, math.nan]}]
    with pytest.raises(DataError) as err:
        prepare(rows, "ranked")
    assert_one_line(err, "row 0", "column 'rewards'", "nan")


def test_chosen_equal_rejected_names_the_row():
    rows = [
        {"prompt": "a", "chosen": "x", "rejected": "y"},
        {"prompt": "a", "chosen": "same", "rejected": "same"},
    ]
    with pytest.raises(DataError) as err:
        prepare(rows, "pair")
    assert_one_line(err, "row 1", "chosen == rejected")


def test_ranked_list_shorter_than_two():
    rows = [{"prompt": "a", "responses": ["x", "y"]}, {"prompt": "a", "responses": ["x"]}]
    with pytest.raises(DataError) as err:
        prepare(rows, "ranked")
    assert_one_line(err, "row 1", "column 'responses'", ">= 2")


def test_ranked_lists_of_unequal_length_name_the_row():
    rows = [
        {"prompt": "a", "responses": ["x", "y", "z"]},
        {"prompt": "a", "responses": ["x", "y", "z"]},
        {"prompt": "a", "responses": ["x", "y"]},
    ]
    with pytest.raises(DataError) as err:
        prepare(rows, "ranked")
    assert_one_line(err, "row 2", "2 responses", "3")


def test_ranked_rewards_length_mismatch():
    rows = [{"prompt": "a", "responses": ["x", "y"], "rewards": [1.0]}]
    with pytest.raises(DataError) as err:
        prepare(rows, "ranked")
    assert_one_line(err, "row 0", "column 'rewards'", "1 rewards for 2 responses")


def test_ranked_sorted_best_first_and_json_strings_decoded():
    rows = [
        {
            "prompt": "a",
            "responses": json.dumps(["mid", "best", "worst"]),
            "rewards": json.dumps([0.5, 2.0, -1.0]),
        }
    ]
    (row,) = prepare(rows, "ranked")
    assert row["responses"] == ["best", "mid", "worst"]
    assert row["rewards"] == [2.0, 0.5, -1.0]


def test_ranked_without_rewards_keeps_order():
    (row,) = prepare([{"prompt": "a", "responses": ["z", "a", "m"]}], "ranked")
    assert row == {"prompt": "a", "responses": ["z", "a", "m"]}


def test_all_rows_dropped_is_an_error():
    ds, fields = map_columns(datasets.Dataset.from_list([{"prompt": " "}]), "prompt")
    with pytest.raises(DataError, match="no rows left"):
        validate(ds, "prompt", fields, drop_empty=True)


# ----------------------------------------------------------------------------- chat templates


def test_render_chat_prompts_uses_the_template():
    tok = get_tokenizer("arithmetic")
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert render_chat_prompts(["1+2="], tok) == ["<user>1+2=\n<assistant>"]


def test_render_chat_prompts_without_template_is_one_line_error():
    tok = get_tokenizer("arithmetic")
    with pytest.raises(DataError) as err:
        render_chat_prompts(["1+2="], tok)
    assert_one_line(err, "no chat template")


@pytest.mark.parametrize(
    "ext, first, second",
    [
        (
            "jsonl",
            _jsonl_rows([{"prompt": "p", "response": "r"}] * 3),
            "\n" + _jsonl_rows([{"prompt": "p", "response": "r"}, {"prompt": "p", "response": ""}]),
        ),
        ("csv", 'prompt,response\n"a\nb",r\np,r\np,r\n', "prompt,response\np,r\np,\n"),
    ],
)
def test_row_of_a_multi_file_source_names_the_file_and_its_row(tmp_path, ext, first, second):
    """Blank JSON Lines lines and quoted CSV newlines are no rows; the error names the second
    file's row 1, which is row 4 of the whole dataset."""
    _write(tmp_path / f"a.{ext}", first)
    _write(tmp_path / f"b.{ext}", second)
    spec = str(tmp_path / f"*.{ext}")
    ds, fields = map_columns(load_source(spec), "response", source=spec)
    with pytest.raises(DataError) as err:
        validate(ds, "response", fields, source=spec)
    assert_one_line(err, f"b.{ext}: row 1, column 'response' (row 4 of {spec}): empty response")
