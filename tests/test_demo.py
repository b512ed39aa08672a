"""The demo's quick size end to end, every registered stage: table, CSV and plot are written."""

from __future__ import annotations

import csv

import pytest

from lightning_rlhf.demo import main, registered_stages


def test_stages_are_registered_in_order():
    names = [s.name for s in registered_stages()]
    assert names[:2] == ["sft", "reward_model"]
    assert len(names) == len(set(names)), "stage names must be unique (they are run directories)"


@pytest.mark.slow
def test_quick_demo_runs_every_stage(tmp_path):
    main(["--quick", "--out", str(tmp_path), "--eval-prompts", "100"])  # exits if a stage fails
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    expected = ["teacher (data)"] + [s.name for s in registered_stages()]
    assert [r["algorithm"] for r in rows] == expected
    assert not any(r.get("error") for r in rows)
    for row in rows[1:]:
        if row["algorithm"] == "reward_model":
            assert 0.0 <= float(row["pairwise_accuracy"]) <= 1.0
            continue
        for key in ("accuracy", "carry_accuracy", "non_carry_accuracy", "reward", "distinct_2"):
            assert 0.0 <= float(row[key]) <= 1.0, (row["algorithm"], key)
        assert float(row["kl"]) >= -0.05, row["algorithm"]  # a sampled estimate, ~0 for SFT
        assert float(row["tokens_per_s"]) > 0 and float(row["wall_s"]) > 0
    assert (tmp_path / "results.md").read_text().startswith("| algorithm |")
    assert (tmp_path / "reward_vs_kl.png").stat().st_size > 1000
    assert (tmp_path / "sft" / "export" / "model.safetensors").exists()


def test_a_failing_stage_is_reported_and_the_others_keep_their_rows(tmp_path, monkeypatch):
    import lightning_rlhf.demo as demo

    stages = [s for s in registered_stages() if s.name in ("sft", "reward_model", "dpo")]
    monkeypatch.setattr(demo, "registered_stages", lambda: stages)

    def fake_fit(stage, run, quick):
        raise RuntimeError(f"boom in {stage.name}\nsecond line")

    done = {"sft", "reward_model"}
    for name in done:  # pretend the first two stages were trained before (reused rows)
        (tmp_path / name / "export").mkdir(parents=True)
        (tmp_path / name / "row.json").write_text(f'{{"algorithm": "{name}"}}')
    monkeypatch.setattr(demo, "fit_stage", fake_fit)
    monkeypatch.setattr(demo, "load_reference", lambda path: None)
    with pytest.raises(SystemExit, match="stages failed: dpo"):
        main(["--out", str(tmp_path), "--reuse", "--eval-prompts", "20"])
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["algorithm"] for r in rows] == ["teacher (data)", "sft", "reward_model", "dpo"]
    assert rows[-1]["error"] == "RuntimeError: boom in dpo"
