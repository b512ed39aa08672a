"""Tests of RLHFDataModule: every format from JSON/JSONL/Parquet/CSV files and from the built-in
task, column mapping, HH transcripts, chat templates, seeded splits and order, pad fallback,
config parsing, and one-line errors that leave the module untouched."""

import csv
import json
import logging
import warnings

import datasets
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.utilities.data import _is_dataloader_shuffled

from lightning_rlhf.data import DataError, RLHFDataModule
from lightning_rlhf.data.collate import tokenize_dataset
from lightning_rlhf.data.tasks import get_tokenizer

KINDS = ["json", "jsonl", "parquet", "csv"]
FORMATS = ["prompt", "response", "pair", "ranked"]


def make_rows(format: str, n: int = 10) -> list[dict]:
    """``n`` rows of ``format``; row i's prompt is ``f"{i}+{i}="``."""
    rows = []
    for i in range(n):
        row = {"prompt": f"{i}+{i}="}
        if format == "response":
            row.update(response=str(2 * i), reward=i / 10)
        elif format == "pair":
            row.update(
                chosen=str(2 * i), rejected=str(2 * i + 1), chosen_reward=1.0, rejected_reward=0.0
            )
        elif format == "ranked":  # best is the second one, after sorting: 2i+1, 2i+2, 2i
            row.update(
                responses=[str(2 * i), str(2 * i + 1), str(2 * i + 2)], rewards=[0.0, 1.0, 0.5]
            )
        rows.append(row)
    return rows


def write(path, rows: list[dict]) -> str:
    """Write ``rows`` to ``path`` in the format of its extension (lists as JSON in CSV)."""
    kind = str(path).rsplit(".", 1)[1]
    if kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for r in rows:
                writer.writerow(
                    {k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}
                )
    return str(path)


def module(dataset: str, format: str = "response", **kw) -> RLHFDataModule:
    """A set-up data module with the built-in tokenizer and small batches."""
    kw = {"batch_size": 4, "val_split": 0.2, **kw}
    dm = RLHFDataModule(tokenizer="builtin:arithmetic", dataset=dataset, format=format, **kw)
    dm.setup("fit")
    return dm


def all_rows(dm: RLHFDataModule) -> list[dict]:
    """Every row of the training and validation splits, through the dataloaders."""
    batches = list(dm.train_dataloader()) + list(dm.val_dataloader())
    return [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["prompt"]))]


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("format", FORMATS)
def test_every_format_from_every_file_kind(tmp_path, kind, format):
    path = write(tmp_path / f"data.{kind}", make_rows(format))
    dm = module(path, format)
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (8, 2)
    rows = all_rows(dm)
    assert sorted(r["prompt"] for r in rows) == sorted(f"{i}+{i}=" for i in range(10))
    tok = dm.tokenizer
    for r in rows:
        i = int(r["prompt"].split("+")[0])
        if format == "prompt":
            ids = r["prompt_input_ids"][r["prompt_attention_mask"].bool()]
            assert tok.decode(ids, skip_special_tokens=True) == r["prompt"]
        elif format == "response":
            assert r["response"] == str(2 * i)
            assert r["reward"].item() == pytest.approx(i / 10)
            assert tok.decode(r["input_ids"][r["response_mask"].bool()]) == f"{2 * i}<eos>"
        else:
            expect = (
                [str(2 * i), str(2 * i + 1)]
                if format == "pair"
                else [str(2 * i + 1), str(2 * i + 2), str(2 * i)]
            )
            got = [tok.decode(ids[m.bool()]) for ids, m in zip(r["input_ids"], r["response_mask"])]
            assert got == [e + "<eos>" for e in expect]
            assert r["rewards"].tolist() == ([1.0, 0.0] if format == "pair" else [1.0, 0.5, 0.0])


def test_glob_and_comma_list_of_files(tmp_path):
    rows = make_rows("response", 12)
    write(tmp_path / "a.jsonl", rows[:6])
    write(tmp_path / "b.jsonl", rows[6:])
    by_glob = module(str(tmp_path / "*.jsonl"), val_split=0.0)
    by_list = module(f"{tmp_path / 'a.jsonl'},{tmp_path / 'b.jsonl'}", val_split=0.0)
    by_dir = module(str(tmp_path), val_split=0.0)
    for dm in (by_glob, by_list, by_dir):
        assert dm.train_dataset["prompt"] == [r["prompt"] for r in rows]
    assert by_glob.val_dataset is None and by_glob.val_dataloader() == []


def test_column_mapping(tmp_path):
    rows = [{"question": f"{i}+1=", "answer": str(i + 1), "score": 0.5} for i in range(5)]
    path = write(tmp_path / "qa.jsonl", rows)
    dm = module(
        path, columns={"prompt": "question", "response": "answer", "reward": "score"}, val_split=0.0
    )
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["response"]) <= {str(i + 1) for i in range(5)}
    assert batch["reward"].tolist() == [0.5] * 4
    assert set(dm.train_dataset.column_names) >= {"prompt", "response", "reward", "index"}


def test_separate_val_dataset(tmp_path):
    train = write(tmp_path / "train.jsonl", make_rows("pair", 6))
    val = write(tmp_path / "val.parquet", make_rows("pair", 3))
    dm = module(train, "pair", val_dataset=val)
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (6, 3)
    assert dm.val_dataset["index"] == [0, 1, 2]
    batch = next(iter(dm.val_dataloader()))
    assert batch["prompt"] == ["0+0=", "1+1=", "2+2="] and batch["index"].tolist() == [0, 1, 2]


def test_hh_transcripts(tmp_path):
    head = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 1+{i}?\n\nAssistant:"
    rows = [
        {"chosen": head.format(i=i) + f" {i + 1}", "rejected": head.format(i=i) + " 0"}
        for i in range(1, 5)
    ]
    dm = module(write(tmp_path / "hh.jsonl", rows), "pair", hh_format=True, val_split=0.0)
    batch = next(iter(dm.val_dataloader() or dm.train_dataloader()))
    i = int(batch["prompt"][0].rsplit("+", 1)[1][0])
    assert batch["prompt"][0] == head.format(i=i)
    assert batch["responses"][0] == [str(i + 1), "0"]
    ids = batch["input_ids"][0, 1][batch["response_mask"][0, 1].bool()]
    assert dm.tokenizer.decode(ids) == "0<eos>"


def test_chat_template(tmp_path):
    path = write(tmp_path / "p.jsonl", make_rows("prompt", 4))
    dm = RLHFDataModule(dataset=path, format="prompt", chat_template=True, val_split=0.0)
    dm.tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}Q:{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %} A:{% endif %}"
    )
    dm.setup()
    rendered = dm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "3+3="}], add_generation_prompt=True, tokenize=False
    )
    assert rendered == "<bos>Q:3+3= A:"
    row = dm.train_dataset[3]
    assert row["prompt"] == "3+3="  # the batch keeps the raw prompt text
    assert row["prompt_ids"] == dm.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert row["prompt_ids"].count(dm.tokenizer.bos_token_id) == 1


# ----------------------------------------------------------------------------- builtin task


@pytest.mark.parametrize("format", FORMATS)
def test_builtin_source_for_every_format(format):
    dm = module("builtin:arithmetic", format, num_train=40, num_val=8, ranked_k=3)
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (40, 8)
    assert dm.train_dataset["prompt"] != dm.val_dataset["prompt"]  # another RNG stream
    batch = next(iter(dm.train_dataloader()))
    if format == "prompt":
        assert batch["prompt_input_ids"].shape[0] == 4
    elif format == "response":
        assert batch["input_ids"].dim() == 2 and batch["reward"].shape == (4,)
    else:
        n = 2 if format == "pair" else 3
        assert batch["input_ids"].shape[:2] == (4, n) and batch["rewards"].shape == (4, n)
        assert (batch["rewards"][:, :-1] >= batch["rewards"][:, 1:]).all()  # best first


def test_builtin_task_options_and_seed():
    exact = module(
        "builtin:arithmetic",
        num_train=30,
        num_val=4,
        task_options={"carry_forget": 0.0, "digit_noise": 0.0},
    )
    assert exact.train_dataset["reward"] == [1.0] * 30
    for prompt, response in zip(exact.train_dataset["prompt"], exact.train_dataset["response"]):
        a, b = prompt.rstrip("=").split("+")
        assert response == str(int(a) + int(b))
    again = module("builtin:arithmetic", num_train=30, num_val=4, seed=0)
    other = module("builtin:arithmetic", num_train=30, num_val=4, seed=1)
    base = module("builtin:arithmetic", num_train=30, num_val=4, seed=0)
    assert again.train_dataset["prompt"] == base.train_dataset["prompt"]
    assert other.train_dataset["prompt"] != base.train_dataset["prompt"]
    no_val = module("builtin:arithmetic", num_train=5, num_val=0)
    assert no_val.val_dataset is None and no_val.val_dataloader() == []


# ----------------------------------------------------------------------------- determinism


def test_split_and_order_are_deterministic_by_seed(tmp_path):
    path = write(tmp_path / "d.jsonl", make_rows("response", 40))
    a, b, c = (module(path, seed=s, val_split=0.25) for s in (0, 0, 1))
    assert a.val_dataset["prompt"] == b.val_dataset["prompt"]
    assert a.val_dataset["prompt"] != c.val_dataset["prompt"]
    order = lambda dm: [p for batch in dm.train_dataloader() for p in batch["prompt"]]  # noqa: E731
    assert order(a) == order(b) != order(c)
    loader = a.train_dataloader()
    first = [p for batch in loader for p in batch["prompt"]]
    assert first == [p for batch in loader for p in batch["prompt"]]  # same epoch, same order
    loader.sampler.set_epoch(1)
    second = [p for batch in loader for p in batch["prompt"]]
    assert second != first and sorted(second) == sorted(first)
    assert _is_dataloader_shuffled(loader)  # Lightning keeps shuffling under a DistributedSampler
    assert not _is_dataloader_shuffled(a.val_dataloader())
    val = [p for batch in a.val_dataloader() for p in batch["prompt"]]
    assert val == a.val_dataset["prompt"]  # validation is not shuffled


def test_with_prompts_and_workers(tmp_path):
    dm = module(write(tmp_path / "d.jsonl", make_rows("pair", 8)), "pair", num_workers=2)
    assert "prompt_input_ids" not in next(iter(loader_of(dm)))
    dm.with_prompts = True
    batch = next(iter(loader_of(dm)))
    assert batch["prompt_input_ids"].shape == batch["prompt_attention_mask"].shape
    assert (batch["prompt_input_ids"][:, -1] == dm.tokenizer.convert_tokens_to_ids("=")).all()
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    assert not module(dm.dataset, "pair").train_dataloader().persistent_workers


def loader_of(dm: RLHFDataModule) -> torch.utils.data.DataLoader:
    """A single-process loader over the module's training set with its current collator."""
    return torch.utils.data.DataLoader(dm.train_dataset, batch_size=4, collate_fn=dm.collate_fn)


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_without_pad_falls_back_to_eos(tmp_path, caplog):
    tok = get_tokenizer("arithmetic")
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "tok")
    dm = RLHFDataModule(tokenizer=str(tmp_path / "tok"))
    with caplog.at_level(logging.INFO, logger="lightning_rlhf.data.module"):
        assert dm.tokenizer.pad_token_id == dm.tokenizer.eos_token_id == 2
        assert dm.tokenizer is dm.tokenizer  # loaded once
    assert sum("no pad token" in r.message for r in caplog.records) == 1


def _unknown_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "has no token for" in str(w.message)]


def test_unknown_characters_are_warned_once_per_tokenizer_naming_them(tmp_path):
    rows = make_rows("response", 8)
    rows[2]["response"] = "8;2+6=8"  # ';' and the euro sign are not in the built-in vocabulary
    rows[5]["prompt"] = "2+2=\u20ac"
    path = write(tmp_path / "d.jsonl", rows)
    dm = RLHFDataModule(tokenizer="builtin:arithmetic", dataset=path, format="response")
    with pytest.warns(UserWarning, match="has no token for") as record:
        dm.setup("fit")
    found = _unknown_warnings(record)
    assert len(found) == 1 and "\n" not in found[0], found
    assert f"{path}: the tokenizer has no token for ';', '\u20ac'; they are encoded as '<unk>'" in (
        found[0]
    )
    tok = dm.tokenizer
    assert tok.decode(tok("8;2", add_special_tokens=False).input_ids, skip_special_tokens=True) == (
        "82"  # what the warning is about: decoding drops them
    )
    with warnings.catch_warnings(record=True) as again:  # the same tokenizer: not warned again
        warnings.simplefilter("always")
        tokenize_dataset(
            dm.train_dataset, tok, "response", max_prompt_length=8, max_response_length=8
        )
    assert not _unknown_warnings(again)


def test_text_inside_the_vocabulary_is_not_warned_about(tmp_path, recwarn):
    warnings.simplefilter("always")
    module(write(tmp_path / "d.jsonl", make_rows("pair")), "pair")
    assert not _unknown_warnings(recwarn.list)


def test_tokenizer_without_pad_or_eos_is_an_error(tmp_path):
    tok = get_tokenizer("arithmetic")
    tok.pad_token = None
    tok.eos_token = None
    tok.save_pretrained(tmp_path / "tok")
    with pytest.raises(DataError, match="neither a pad nor an EOS"):
        _ = RLHFDataModule(tokenizer=str(tmp_path / "tok")).tokenizer


def test_config_schema_parses_with_jsonargparse():
    parser = ArgumentParser()
    parser.add_class_arguments(RLHFDataModule, "data")
    cfg = parser.parse_args(
        [
            "--data.format=pair",
            "--data.columns={prompt: question}",
            "--data.task_options={carry_forget: 0.5}",
            "--data.batch_size=8",
        ]
    )
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, RLHFDataModule)
    assert (dm.format, dm.columns, dm.batch_size) == ("pair", {"prompt": "question"}, 8)
    assert dm.task_options == {"carry_forget": 0.5} and dm.eval_batch_size == 8
    with pytest.raises(SystemExit):
        parser.parse_args(["--data.format=triples"])


# ----------------------------------------------------------------------------- errors


def assert_untouched_error(dm: RLHFDataModule, *parts: str) -> None:
    """``setup`` raises a one-line DataError naming ``parts`` and leaves no datasets behind."""
    with pytest.raises(DataError) as err:
        dm.setup()
    msg = str(err.value)
    assert "\n" not in msg and all(p in msg for p in parts), msg
    assert dm.train_dataset is None and dm.val_dataset is None


def test_missing_file(tmp_path):
    dm = RLHFDataModule(dataset=str(tmp_path / "nope.jsonl"))
    assert_untouched_error(dm, "nope.jsonl", "no such file")


def test_unknown_builtin_task():
    assert_untouched_error(RLHFDataModule(dataset="builtin:chess"), "builtin:chess", "unknown")
    with pytest.raises(DataError, match="chess"):
        _ = RLHFDataModule(tokenizer="builtin:chess").tokenizer


def test_errors_name_the_file_row_and_column(tmp_path):
    rows = make_rows("pair", 5)
    rows[3]["rejected"] = rows[3]["chosen"]
    path = write(tmp_path / "pairs.csv", rows)
    assert_untouched_error(
        RLHFDataModule(dataset=path, format="pair"), "pairs.csv", "row 3", "chosen == rejected"
    )
    rows = make_rows("response", 5)
    rows[2]["reward"] = float("nan")
    path = write(tmp_path / "scored.jsonl", rows)
    assert_untouched_error(RLHFDataModule(dataset=path), "scored.jsonl", "row 2", "'reward'")
    path = write(tmp_path / "qa.parquet", [{"q": "1+1=", "a": "2"}])
    assert_untouched_error(RLHFDataModule(dataset=path), "qa.parquet", "['q', 'a']", "columns:")


def test_csv_empty_cell_and_text_numbers(tmp_path):
    rows = make_rows("response", 4)
    rows[1]["response"] = ""
    path = write(tmp_path / "s.csv", rows)
    assert_untouched_error(RLHFDataModule(dataset=path), "s.csv", "row 1", "'response'", "empty")
    with pytest.warns(UserWarning, match="dropped 1 of 4"):
        dm = module(path, drop_empty=True, val_split=0.0)
    assert dm.train_dataset["response"] == ["0", "4", "6"]  # numbers stay text in CSV


def test_chat_template_missing_and_val_split_errors(tmp_path):
    path = write(tmp_path / "p.jsonl", make_rows("prompt", 4))
    dm = RLHFDataModule(dataset=path, format="prompt", chat_template=True)
    assert_untouched_error(dm, "no chat template")
    with pytest.raises(DataError, match="val_split"):
        RLHFDataModule(val_split=1.0)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("batch_size", 0, "data: batch_size must be >= 1, got 0"),
        ("eval_batch_size", -2, "data: eval_batch_size must be >= 1, got -2"),
        ("num_workers", -1, "data: num_workers must be >= 0, got -1"),
    ],
)
def test_loader_options_are_range_checked(option, value, message):
    with pytest.raises(ValueError, match=message):
        RLHFDataModule(**{option: value})
