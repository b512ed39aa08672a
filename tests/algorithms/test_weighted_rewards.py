"""Several rewards with weights through the CLI: an online fit logs each reward's mean beside the
weighted total, and a weights list that does not fit the rewards is one line with exit code 2."""

from __future__ import annotations

import csv

import pytest

from tests.algorithms.e2e import run_fit
from tests.algorithms.online_helpers import online_args
from tests.test_bad_input import cli_error

DIGITS = "tests.algorithms.online_helpers:digit_share"
ONE = "tests.algorithms.online_helpers:starts_with_one"


def test_grpo_fits_with_two_weighted_scorers(sft_export, tmp_path):
    args = online_args(sft_export, "--model.init_args.reward", f"[{DIGITS}, {ONE}]",
                       "--model.init_args.reward_weights", "[1.0, 0.5]")  # fmt: skip
    cli, snap = run_fit("grpo/arithmetic.yaml", tmp_path, *args, steps=4)  # two rollouts
    assert cli.model.hparams.reward == [DIGITS, ONE] and snap.unchanged(cli.model) == []
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["rollout/reward"]]
    assert len(rows) == 2
    for row in rows:  # the mean of a weighted sum is the weighted sum of the means
        digits = float(row["rollout/reward/digit_share"])
        one = float(row["rollout/reward/starts_with_one"])
        assert 0 <= digits <= 1 and one in {k / 16 for k in range(17)}  # 16 responses of 0 or 1
        assert float(row["rollout/reward"]) == pytest.approx(digits + 0.5 * one, abs=1e-6)


@pytest.mark.parametrize("weights, message", [
    ("[1.0]", "GRPO: reward_weights has 1 weight(s) for 2 reward(s)"),
    ("[1.0, .nan]", "GRPO: reward_weights must be finite numbers, got nan"),
])  # fmt: skip
def test_weights_that_do_not_fit_are_one_line_through_the_cli(tmp_path, capsys, weights, message):
    line = cli_error(capsys, "grpo/arithmetic.yaml", tmp_path, "--model.init_args.reward",
                     f"[{DIGITS}, {ONE}]", "--model.init_args.reward_weights", weights)  # fmt: skip
    assert line.startswith(f"error: RewardError: {message}")
