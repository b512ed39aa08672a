"""The comparison command: its statistics on hand-worked numbers, study configs (shipped ones
included) and one quick study through ``python -m lightning_rlhf compare``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from lightning_rlhf.__main__ import main
from lightning_rlhf.cli_errors import ConfigError
from lightning_rlhf.compare import SUMMARY_COLUMNS, load_study
from lightning_rlhf.compare_report import (
    band,
    final_value,
    mean_ci,
    moving_average,
    rollouts_to,
    t_critical,
)
from tests.algorithms.e2e import TINY

STUDIES = sorted((Path(__file__).resolve().parents[1] / "configs" / "compare").glob("*.yaml"))


# ---- statistics ---------------------------------------------------------------------------
def test_mean_ci_hand_worked() -> None:
    # [1, 2, 3]: mean 2, s = 1, t(0.975, 2) = 4.302653 -> half width 4.302653 / sqrt(3)
    mean, half = mean_ci([1, 2, 3])
    assert mean == 2.0 and half == pytest.approx(2.484138, abs=1e-6)
    # [0.9, 0.95]: mean 0.925, s = 0.035355, t(1) = 12.706205 -> 12.706205 * 0.025 = 0.317655
    assert mean_ci([0.9, 0.95]) == (pytest.approx(0.925), pytest.approx(0.317655, abs=1e-6))
    assert mean_ci([5, 5, 5, 5]) == (5.0, 0.0)
    one = mean_ci([0.7])
    assert one[0] == 0.7 and math.isnan(one[1])
    assert all(math.isnan(x) for x in mean_ci([]))
    assert mean_ci([1, float("nan"), 3])[0] == 2.0  # a missing value is dropped


def test_t_critical_table_and_expansion() -> None:
    assert t_critical(1) == 12.706205 and t_critical(30) == 2.042272
    assert t_critical(60) == pytest.approx(2.000298, abs=1e-4)  # beyond the table
    assert t_critical(10_000) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError, match="df >= 1"):
        t_critical(0)


def test_moving_average_and_rollouts_to_threshold_on_a_hand_curve() -> None:
    curve = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    # window 2: 0.0, 0.1, 0.3, 0.5, 0.7, 0.9
    assert moving_average(curve, 2) == pytest.approx([0.0, 0.1, 0.3, 0.5, 0.7, 0.9])
    assert rollouts_to(curve, 0.5, window=2) == 4
    assert rollouts_to(curve, 0.35, window=1) == 3  # raw curve: 0.2 < 0.35 <= 0.4
    assert rollouts_to(curve, 0.35, window=2) == 4  # smoothed: 0.3 < 0.35 <= 0.5
    assert rollouts_to(curve, 0.95, window=2) is None  # the smoothed curve tops out at 0.9
    assert rollouts_to(curve, 0.0, window=3) == 1
    assert final_value(curve, 3) == pytest.approx(0.8)
    mean, low, high = band([[1.0, 2.0, 3.0], [3.0, 4.0]])  # shared length 2
    assert mean == [2.0, 3.0] and low[0] == pytest.approx(2.0 - 12.706205)
    assert high[1] == pytest.approx(3.0 + 12.706205)
    with pytest.raises(ValueError, match="window must be >= 1"):
        moving_average(curve, 0)


# ---- study configs ------------------------------------------------------------------------
@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
@pytest.mark.parametrize("quick", [False, True])
def test_shipped_studies_load(path: Path, quick: bool) -> None:
    study = load_study(path, quick)
    assert len(study.seeds) >= (1 if quick else 3)
    assert study.baseline in [r.name for r in study.runs]
    if study.frontier_runs:
        assert len(study.frontier_coefficients) >= (2 if quick else 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\n", "missing key 'runs'"),
        ("runs: []\nseeds: [0]\nsft: {export: x}\n", "at least one"),
        ("runs: [{name: a, config: nope.yaml}]\n", "config 'nope.yaml' not found"),
        ("runz: 1\n", "unknown key\\(s\\) runz"),
        (
            "seeds: [0]\nsft: {export: x}\nbaseline: b\n"
            "runs: [{name: a, config: ppo/arithmetic.yaml}]\n",
            "baseline 'b' is not one of the runs",
        ),
    ],
)
def test_bad_study_configs_are_one_line_errors(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_study(path)
    assert "\n" not in str(err.value)


def test_missing_study_file_exits_with_code_2(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--config", str(tmp_path / "none.yaml")])
    assert exit_info.value.code == 2
    assert "no study config" in capsys.readouterr().err


# ---- one quick study through the CLI ------------------------------------------------------
QUICK_STUDY = {
    "name": "tiny",
    "task": "arithmetic",
    "seeds": [0, 1, 2],
    "sft": {"config": "sft/arithmetic.yaml"},
    "baseline": "ppo",
    "threshold": 0.05,
    "window": 2,
    "runs": [
        {"name": "ppo", "config": "ppo/arithmetic.yaml", "kl": 0.02, "rollouts": 8},
        {"name": "grpo", "config": "grpo/arithmetic.yaml", "rollouts": 8},
    ],
    "frontier": {"runs": ["ppo"], "coefficients": [0.02, 0.2, 1.0]},
}


@pytest.fixture
def one_thread():
    """One intra-op thread: these tiny models spend 2 threads' time syncing (98 s against 25 s
    for the quick study on a loaded 2-core machine); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_quick_study_through_the_cli_writes_tables_curves_and_frontier(
    tmp_path, capsys, one_thread
) -> None:
    tiny = json.dumps({"name_or_path": None, "config": TINY})
    small = {"data.num_train": 64, "data.num_val": 8, "data.batch_size": 8}
    study = {
        **QUICK_STUDY,
        "quick": {
            "seeds": [0, 1],
            "rollouts": 3,
            "eval_prompts": 16,
            "coefficients": [0.02, 0.5],
            "sft_overrides": {"trainer.max_steps": 4, "model.init_args.policy": tiny, **small},
            "run_overrides": {**small, "model.init_args.minibatch_size": 8},
        },
    }
    config = tmp_path / "study.yaml"
    config.write_text(json.dumps(study))
    out = tmp_path / "out"
    main(["compare", "--config", str(config), "--out", str(out), "--quick"])
    progress = [line for line in capsys.readouterr().out.splitlines() if " seed " in line]
    assert len(progress) == 2 * 2 + 2  # 2 runs x 2 seeds, 1 more frontier point x 2 seeds
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert list(rows[0]) == SUMMARY_COLUMNS
    assert [r["run"] for r in rows] == ["sft (start)", "ppo", "grpo"]
    ppo = rows[1]
    assert ppo["seeds"] == "2" and "±" in ppo["final_reward"] and "±" in ppo["kl"]
    assert ppo["reached_baseline"].endswith("/2") and ppo["wall_s_per_rollout"]
    assert ppo["explained_variance"] and not rows[2]["explained_variance"]  # GRPO has no critic
    curves = list(csv.DictReader((out / "curves.csv").open()))
    assert len(curves) == 2 * 2 * 3 and {c["rollout"] for c in curves} == {"1", "2", "3"}
    frontier = list(csv.DictReader((out / "frontier.csv").open()))
    assert [(f["run"], float(f["coefficient"])) for f in frontier] == [("ppo", 0.02), ("ppo", 0.5)]
    for name in ("curves_rollouts.png", "curves_wall.png", "frontier.png"):
        assert (out / name).stat().st_size > 1000
    assert (out / "summary.md").read_text().count("\n| ") >= 3

    # a second call reuses every finished run: nothing is trained again
    main(["compare", "--config", str(config), "--out", str(out), "--quick"])
    lines = capsys.readouterr().out.splitlines()
    assert sum("(reused;" in line for line in lines) == 6 and "reusing the SFT start" not in ""
    assert list(csv.DictReader((out / "summary.csv").open())) == rows


def test_size_options_replace_seeds_rollouts_and_coefficients(capsys) -> None:
    path = STUDIES[0].parent / "p3o_arithmetic.yaml"
    size = {"seeds": [4, 5], "rollouts": 7, "coefficients": [0.1, 0.3], "eval_prompts": 9}
    study = load_study(path, size=size)
    assert study.seeds == (4, 5) and {r.rollouts for r in study.runs} == {7}
    assert study.frontier_coefficients == (0.1, 0.3) and study.eval_prompts == 9
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--config", str(path), "--seeds", "0,x"])
    assert exit_info.value.code == 2 and "comma lists" in capsys.readouterr().err


def test_every_seed_draws_its_own_data_and_the_model_seed_follows_where_it_exists() -> None:
    from lightning_rlhf.compare import _seed_args

    assert _seed_args("ppo/arithmetic.yaml", 3) == (
        "--data.seed", "3", "--model.init_args.seed", "3"
    )  # fmt: skip
    assert _seed_args("dpo/arithmetic.yaml", 3) == ("--data.seed", "3")  # DPO takes no seed
