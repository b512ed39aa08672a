"""The demo's quick size end to end (SFT + reward model): table, CSV and plot are written."""

from __future__ import annotations

import csv

import pytest

from lightning_rlhf.demo import main, registered_stages


def test_stages_are_registered_in_order():
    names = [s.name for s in registered_stages()]
    assert names[:2] == ["sft", "reward_model"]
    assert len(names) == len(set(names)), "stage names must be unique (they are run directories)"


@pytest.mark.slow
def test_quick_demo_writes_table_csv_and_plot(tmp_path):
    main(["--quick", "--out", str(tmp_path), "--only", "none", "--eval-prompts", "100"])
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["algorithm"] for r in rows] == ["teacher (data)", "sft", "reward_model"]
    sft = rows[1]
    for key in ("accuracy", "carry_accuracy", "non_carry_accuracy", "reward", "distinct_2"):
        assert 0.0 <= float(sft[key]) <= 1.0, key
    assert float(sft["tokens_per_s"]) > 0 and float(sft["wall_s"]) > 0
    assert 0.0 <= float(rows[2]["pairwise_accuracy"]) <= 1.0
    assert (tmp_path / "results.md").read_text().startswith("| algorithm |")
    assert (tmp_path / "reward_vs_kl.png").stat().st_size > 1000
    assert (tmp_path / "sft" / "export" / "model.safetensors").exists()
