"""The demo's quick size end to end, every registered stage: table, CSV and plot are written."""

from __future__ import annotations

import csv
from pathlib import Path

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
    first, _, table = (tmp_path / "results.md").read_text().partition("\n\n")
    assert first.startswith("Measured with python ") and " torch " in first, first
    assert table.startswith("| algorithm |")
    assert (tmp_path / "reward_vs_kl.png").stat().st_size > 1000
    assert (tmp_path / "sft" / "export" / "model.safetensors").exists()
    assert not list(tmp_path.glob("*/checkpoints")), "finished stages keep no checkpoints"
    commands = [x for x in (tmp_path / "results.md").read_text().splitlines() if x.startswith("- ")]
    assert len(commands) == len(expected) - 1  # every stage's fit command (not the teacher's)


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


ROOT = Path(__file__).resolve().parents[1]


def test_only_rejects_an_unknown_stage_in_one_line_before_running(tmp_path, capsys, monkeypatch):
    from lightning_rlhf.__main__ import main as entry

    monkeypatch.delenv("LIGHTNING_RLHF_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        entry(["demo", "--out", str(tmp_path / "out"), "--only", "ppo,nope"])
    assert exit_info.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert "unknown stage 'nope'" in line and "sft, reward_model, ppo" in line
    assert not (tmp_path / "out").exists(), "nothing ran"


def test_the_demo_and_the_configs_agree_on_where_exports_live():
    """Every shipped arithmetic config starts from the exports the demo writes by default."""
    import yaml

    from lightning_rlhf.demo import DEFAULT_OUT

    default_out = Path(DEFAULT_OUT)
    sft, rm = str(default_out / "sft" / "export"), str(default_out / "reward_model" / "export")
    seen = 0
    for path in sorted((ROOT / "configs").glob("*/arithmetic*.yaml")):
        init = yaml.safe_load(path.read_text())["model"]["init_args"]
        policy = init["policy"].get("name_or_path")
        if policy is not None:
            assert policy == sft, path
            seen += 1
        reward = init.get("reward", "")
        if "/" in reward:
            assert reward == rm, path
    assert seen >= 10


def test_a_missing_sft_export_says_run_sft_first_before_reading_data(tmp_path, capsys,
                                                                     monkeypatch):  # fmt: skip
    from lightning_rlhf.cli import main as cli_main

    monkeypatch.chdir(tmp_path)  # no runs/sft/export here
    monkeypatch.delenv("LIGHTNING_RLHF_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(ROOT / "configs" / "grpo" / "arithmetic.yaml")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "'runs/sft/export' does not exist" in line
    hint = "run SFT first: python -m lightning_rlhf fit --config configs/sft/arithmetic.yaml"
    assert hint in line
    assert "tokenising" not in err


def test_results_md_gives_each_rows_command_and_the_table_prints_once(tmp_path, monkeypatch,
                                                                      capsys, caplog):  # fmt: skip
    import logging

    import lightning_rlhf.demo as demo

    stages = [s for s in registered_stages() if s.name in ("sft", "reward_model", "ppo", "dpo")]
    monkeypatch.setattr(demo, "registered_stages", lambda: stages)

    def fake_fit(stage, run, quick):
        raise RuntimeError(f"boom in {stage.name}")

    for name in ("sft", "reward_model"):
        (tmp_path / name / "export").mkdir(parents=True)
        (tmp_path / name / "row.json").write_text(f'{{"algorithm": "{name}"}}')
    monkeypatch.setattr(demo, "fit_stage", fake_fit)
    monkeypatch.setattr(demo, "load_reference", lambda path: None)
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit, match="failed: ppo, dpo"):
        main(["--out", str(tmp_path), "--reuse", "--eval-prompts", "20"])
    out = capsys.readouterr().out
    assert out.count("| algorithm |") == 1, "the table is printed once, at the end"
    assert f"table and commands: {tmp_path / 'results.md'}" in out
    assert f"CSV: {tmp_path / 'results.csv'}" in out
    assert "stage 3 of 4: ppo" in caplog.text and "stage 4 of 4: dpo" in caplog.text
    text = (tmp_path / "results.md").read_text()
    ppo = (f"- ppo: `python -m lightning_rlhf fit --config configs/ppo/arithmetic.yaml "
           f"--trainer.default_root_dir {tmp_path}/ppo --model.init_args.policy.name_or_path "
           f"{tmp_path}/sft/export --trainer.max_steps 48`")  # fmt: skip
    assert ppo in text.splitlines()
    assert "- sft: `python -m lightning_rlhf fit --config configs/sft/arithmetic.yaml" in text


def test_each_rows_command_parses_from_the_repository_root(monkeypatch, capsys):
    import shlex

    from lightning_rlhf.cli import RLHFCLI
    from lightning_rlhf.demo import fit_command

    monkeypatch.chdir(ROOT)
    for stage in registered_stages()[:4]:
        args = shlex.split(fit_command(stage, Path("runs"), quick=True))[3:]
        with pytest.raises(SystemExit) as exit_info:
            RLHFCLI(args=[*args, "--print_config"])
        assert exit_info.value.code in (0, None), capsys.readouterr().err


def test_a_finished_stage_keeps_its_export_and_row_not_its_checkpoints(tmp_path):
    from lightning_rlhf.demo import _drop_checkpoints

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x" * 100)
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.safetensors").write_bytes(b"y")
    (tmp_path / "row.json").write_text("{}")
    _drop_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "row.json"]


def test_the_readme_table_is_the_demos_own_output():
    """The README's demo table is pasted from results.md (between its markers): the versions line,
    the demo's columns and one row per stage, in order, after the teacher's."""
    from lightning_rlhf.demo import COLUMNS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("<!-- demo-table:start -->")[1].split("<!-- demo-table:end -->")[0]
    lines = [x for x in block.strip().splitlines() if x.strip()]
    assert lines[0].startswith("Measured with python ") and " CPU cores" in lines[0]
    table = [x for x in lines if x.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[: len(COLUMNS)] == COLUMNS
    names = [row.strip("|").split("|")[0].strip() for row in table[2:]]
    assert names == ["teacher (data)"] + [s.name for s in registered_stages()]
