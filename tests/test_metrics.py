"""Distinct-n and the generation-metric bundle."""

from __future__ import annotations

import torch

from lightning_rlhf.metrics import DistinctN, GenerationMetrics, stable_hash


def test_distinct2_hand_worked():
    metric = DistinctN(2, unit="word")
    metric.update(["a b a b", "a b c"])  # bigrams: ab ba ab | ab bc -> 5 total, 3 unique
    assert abs(float(metric.compute()) - 3 / 5) < 1e-6  # fp32
    chars = DistinctN(2, unit="char")
    chars.update(["111"])  # 11 11 -> 1 unique of 2
    assert float(chars.compute()) == 0.5
    assert float(DistinctN(2).compute()) == 0.0


def test_stable_hash_is_not_salted():
    import subprocess
    import sys

    code = "from lightning_rlhf.metrics import stable_hash; print(stable_hash(('a', 'b')))"
    out = {
        subprocess.check_output(
            [sys.executable, "-c", code], env={"PYTHONHASHSEED": s, "PATH": ""}
        ).strip()
        for s in ("1", "2")
    }
    assert out == {str(stable_hash(("a", "b"))).encode()}


def test_generation_metrics_means():
    m = GenerationMetrics(distinct_unit="char")
    m.update(["12", "34"], torch.tensor([1.0, 0.0]), torch.tensor([0.2, 0.4]), torch.tensor([3, 3]))
    out = m.compute()
    assert (
        out["reward"] == 0.5
        and abs(out["kl"] - 0.3) < 1e-6
        and out["length"] == 3
        and out["distinct_2"] == 1.0
    )
