"""The command line ends an input error with its one-line message and exit code 2."""

from __future__ import annotations

import json

import pytest

from lightning_rlhf.cli import main
from tests.algorithms.e2e import CONFIGS, TINY


def _fit_args(tmp_path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(CONFIGS / "sft" / "arithmetic.yaml"),
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_steps", "1",
        "--model.init_args.policy", json.dumps({"name_or_path": None, "config": TINY}),
        *extra,
    ]  # fmt: skip


def test_missing_column_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LIGHTNING_RLHF_DEBUG", raising=False)
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"}\n')
    with pytest.raises(SystemExit) as exit_info:
        main(_fit_args(tmp_path, "--data.dataset", str(data)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    assert "DataError" in line and str(data) in line and "'response'" in line


def test_debug_env_gives_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_RLHF_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        missing = {"name_or_path": str(tmp_path / "no"), "config": None}
        main(_fit_args(tmp_path, "--model.init_args.policy", json.dumps(missing)))
