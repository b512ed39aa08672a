"""Loggers users use: the W&B and MLflow overlays parse through the CLI and, where the package is
installed, a tiny run logs to them (offline / a local file store); a configured logger gets the
CSV logger beside it, so ``metrics.csv`` is always written."""

from __future__ import annotations

import csv
import importlib.util
from typing import Any

import pytest
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from lightning_rlhf.cli import RLHFCLI
from lightning_rlhf.loggers import HistoryCSVLogger
from tests.algorithms.e2e import CONFIGS, run_fit, tiny_policy

OVERLAYS = {"wandb": "WandbLogger", "mlflow": "MLFlowLogger"}


class ListLogger(Logger):
    """Keeps every logged metrics dict in a list (stands in for a W&B / MLflow logger)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return "list"

    @property
    def version(self) -> str:
        return "0"

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append(dict(metrics))


@pytest.mark.parametrize("name", list(OVERLAYS))
def test_overlay_parses_with_offline_defaults(name, capsys):
    args = ["fit", "--config", str(CONFIGS / "sft" / "arithmetic.yaml"),
            "--config", str(CONFIGS / "trainer" / f"{name}.yaml"), "--print_config"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        RLHFCLI(args=args)
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"lightning.pytorch.loggers.{OVERLAYS[name]}" in printed
    if name == "wandb":
        assert "offline: true" in printed
    else:
        assert "tracking_uri: sqlite:///runs/mlflow.db" in printed


def test_a_configured_logger_gets_metrics_csv_beside_it(tmp_path):
    logger = '[{"class_path": "tests.test_loggers.ListLogger"}]'
    cli, _ = run_fit("sft/arithmetic.yaml", tmp_path, *tiny_policy(), "--trainer.logger", logger,
                     "--trainer.callbacks", "[]", steps=2)  # fmt: skip
    kinds = [type(x) for x in cli.trainer.loggers]
    assert kinds == [HistoryCSVLogger, ListLogger]
    mine = cli.trainer.loggers[1]
    assert any("train/loss" in row for row in mine.rows)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert any(row.get("train/loss") for row in rows)


def test_logger_false_means_none(tmp_path):
    cli = RLHFCLI(args=["--config", str(CONFIGS / "sft" / "arithmetic.yaml"),
                        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
                        *tiny_policy()], run=False)  # fmt: skip
    assert cli.trainer.loggers == []


@pytest.mark.parametrize("name", list(OVERLAYS))
def test_a_tiny_run_logs_through_the_overlay(name, tmp_path, monkeypatch):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed here (pip install {name}); the overlay only parses")
    monkeypatch.chdir(tmp_path)  # the overlays write under ./runs
    (tmp_path / "runs").mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    overlay = ("--config", str(CONFIGS / "trainer" / f"{name}.yaml"))
    run_fit("sft/arithmetic.yaml", tmp_path / "run", *overlay, *tiny_policy(),
            "--trainer.callbacks", "[]", steps=2)  # fmt: skip
    assert (tmp_path / "run" / "metrics.csv").exists()
    if name == "wandb":
        assert list((tmp_path / "runs" / "wandb").rglob("offline-run-*/run-*.wandb"))
    else:
        from mlflow.tracking import MlflowClient

        client = MlflowClient("sqlite:///runs/mlflow.db")
        experiment = client.get_experiment_by_name("lightning-rlhf")
        (run,) = client.search_runs([experiment.experiment_id])
        assert "train/loss" in run.data.metrics
