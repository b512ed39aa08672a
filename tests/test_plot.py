"""Plots: the ``plot`` command draws a run's metrics.csv; the demo's reward-vs-KL scatter tells
its 20 rows apart (a colour map per family, a marker and shade per row) with the teacher as a
reference line."""

from __future__ import annotations

import csv

import pytest

from lightning_rlhf.demo import registered_stages
from lightning_rlhf.plot import FAMILIES, family, point_styles, read_metrics

matplotlib = pytest.importorskip("matplotlib", reason="plots need the demo extra (matplotlib)")


def _metrics_csv(path):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", "train/loss", "val/loss"])
        writer.writeheader()
        for step in range(1, 6):
            writer.writerow({"epoch": 0, "step": step, "train/loss": 5 - step, "val/loss": ""})
        writer.writerow({"epoch": 0, "step": 5, "train/loss": "", "val/loss": 1.5})
    return path


def test_metrics_are_read_per_column_with_their_steps(tmp_path):
    path, curves = read_metrics(_metrics_csv(tmp_path / "metrics.csv").parent)
    assert path == tmp_path / "metrics.csv"
    assert curves == {"train/loss": [(float(s), 5.0 - s) for s in range(1, 6)],
                      "val/loss": [(5.0, 1.5)]}  # fmt: skip


def test_plot_command_writes_curves_png(tmp_path, capsys):
    from lightning_rlhf.__main__ import main

    _metrics_csv(tmp_path / "metrics.csv")
    main(["plot", str(tmp_path)])
    png = tmp_path / "curves.png"
    assert png.stat().st_size > 5000 and f"wrote {png}" in capsys.readouterr().out
    main(["plot", str(tmp_path / "metrics.csv"), "--out", str(tmp_path / "x.png"),
          "--metrics", "^train/"])  # fmt: skip
    assert (tmp_path / "x.png").stat().st_size > 5000


def test_plot_command_without_metrics_is_one_line(tmp_path, capsys, monkeypatch):
    from lightning_rlhf.__main__ import main

    monkeypatch.delenv("LIGHTNING_RLHF_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"no metrics.csv at {tmp_path}" in capsys.readouterr().err


def test_every_demo_row_has_a_family_and_a_style_of_its_own():
    names = [s.name for s in registered_stages() if s.policy_row]
    assert len(names) >= 20
    styles = point_styles(names)
    assert len({(cmap, shade, marker) for _, _, cmap, shade, marker in styles.values()}) == len(
        names
    )
    assert {family(n) for n in names} == {f for f, _ in FAMILIES}
    assert family("ppo_rm") != family("ppo") and family("a_lol_kl") == family("wbc")
    for members in ({n for n in names if family(n) == f} for f, _ in FAMILIES):
        markers = [styles[n][4] for n in members]
        assert len(set(markers)) == len(markers), "markers repeat within a family"


def test_reward_vs_kl_draws_every_row_and_the_teacher_line(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from lightning_rlhf.plot import reward_vs_kl

    names = [s.name for s in registered_stages() if s.policy_row]
    rows = [{"algorithm": "teacher (data)", "reward": 0.57}]
    rows += [{"algorithm": n, "kl": 0.1 * i, "reward": 0.5 + 0.02 * i} for i, n in enumerate(names)]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at
    assert reward_vs_kl(rows, tmp_path / "p.png") == tmp_path / "p.png"
    ax = figures[0].axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert len(labels) == len(names) + 1 and labels[-1] == "teacher (the data)"
    assert [line.get_ydata()[0] for line in ax.get_lines()] == [0.57]
    assert "KL to SFT" in ax.get_xlabel() and "greedy" in ax.get_ylabel()
    assert (tmp_path / "p.png").stat().st_size > 10000
