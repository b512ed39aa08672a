"""``make gpu-check`` (``python -m lightning_rlhf.gpu_check``): every check that needs a GPU, in one
command of under 8 minutes, ending in one summary table.

1. ``pytest -m gpu tests/kernels``: the compiled Triton kernels against their references;
2. ``python -m kernels.bench`` for the log-prob ops at N = 16384, V = 128256, H = 4096, bf16;
3. SFT steps under FSDP2 on one GPU (``configs/trainer/fsdp2.yaml``'s strategy and precision) on
   a ~0.5B Qwen2-shaped model built from config, with a synthetic batch through Lightning's
   Trainer: no ``datasets``, no ``jsonargparse``, no download (a bare machine with torch,
   lightning, transformers and triton, and a copy of this repository, is enough; pytest for 1).

Achieved bandwidth and TFLOP/s are divided by the device's datasheet peak
(``kernels._bench_util.DEVICE_PEAKS``). Without a CUDA device it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH_SHAPE = (16384, 128256, 4096, "bf16")
#: seconds each step may take (8 minutes in all, start-up included)
BUDGET = {"pytest": 200, "bench": 150, "sft": 110}
#: Qwen2-0.5B's shape (494M parameters with the tied 151936-token embedding)
QWEN2_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
             "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
             "max_position_embeddings": 4096, "tie_word_embeddings": True}
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 101,
        "max_position_embeddings": 64}
SFT_MARK = "GPU_CHECK_SFT "


# --- running the steps ---------------------------------------------------------------------


def _run(cmd: list[str], timeout: int) -> tuple[int, str, float]:
    """(return code, stdout + stderr, seconds) of ``cmd`` run from the repository root with the
    repository on PYTHONPATH (no install needed) and compiled Triton; rc 124 on timeout."""
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=timeout)
        return out.returncode, out.stdout + out.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as err:
        text = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        return 124, text + f"\n(timed out after {timeout} s)", time.perf_counter() - t0


def parse_pytest(text: str) -> str:
    """The counts of pytest's last summary line ("12 passed, 3 skipped"), or its last line."""
    counts = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", text)
    if counts:
        return ", ".join(f"{n} {word}" for n, word in counts if word != "deselected")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:100] if lines else "no output"


def read_bench_csv(path: Path) -> list[dict]:
    """Rows of ``kernels.bench --out``'s CSV with numbers as floats (empty cells None)."""
    rows = []
    with open(path) as f:
        for raw in csv.DictReader(f):
            row = {}
            for key, value in raw.items():
                try:
                    row[key] = float(value) if value != "" else None
                except ValueError:
                    row[key] = value
            rows.append(row)
    return rows


# --- the SFT step (its own process: Lightning sets up a process group for FSDP2) -------------


def sft_step(config: dict, accelerator: str, batch: int, length: int, steps: int) -> dict:
    """``steps`` SFT steps (token-mean NLL of the second half of each row, through
    ``models.response_logprobs``) under ``FSDP2Strategy`` on one device; returns the measured
    step time (median after the first, which compiles and probes) and the model size."""
    import importlib

    import lightning as L
    import yaml
    from transformers import AutoConfig, AutoModelForCausalLM

    from lightning_rlhf.losses import sft_loss
    from lightning_rlhf.models import response_logprobs
    from lightning_rlhf.strategies import reshard_after_step, shard_causal_lm

    class SFTStep(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.policy: torch.nn.Module | None = None
            self.losses: list[float] = []

        def configure_model(self) -> None:
            if self.policy is None:
                torch.manual_seed(0)
                self.policy = AutoModelForCausalLM.from_config(
                    AutoConfig.for_model("qwen2", **config))
                if getattr(self, "device_mesh", None) is not None:
                    shard_causal_lm(self.policy, self.device_mesh["data_parallel"])

        def training_step(self, b: dict, _: int) -> torch.Tensor:
            lp = response_logprobs(self.policy, b["input_ids"], b["attention_mask"],
                                   b["response_mask"])  # (B, L)
            loss, _ = sft_loss(lp, b["response_mask"])
            self.losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            optimizer = torch.optim.AdamW(self.parameters(), lr=1e-5)
            reshard_after_step(optimizer, self)
            return optimizer

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, *_) -> None:
            _sync(accelerator)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, *_) -> None:
            _sync(accelerator)
            self.times.append(time.perf_counter() - self.t0)

    fsdp2 = yaml.safe_load((ROOT / "configs/trainer/fsdp2.yaml").read_text())["trainer"]
    module_name, _, class_name = fsdp2["strategy"]["class_path"].rpartition(".")
    strategy_cls = getattr(importlib.import_module(module_name), class_name)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config["vocab_size"], (steps, batch, length), generator=gen)
    response = torch.zeros(batch, length, dtype=torch.long)
    response[:, length // 2 :] = 1  # (B, L) the second half of each row is scored
    data = [{"input_ids": ids[i], "attention_mask": torch.ones_like(ids[i]),
             "response_mask": response} for i in range(steps)]
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    module, timer = SFTStep(), Timer()
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, max_steps=steps, logger=False,
        strategy=strategy_cls(**fsdp2["strategy"].get("init_args", {})),
        precision=fsdp2["precision"] if accelerator == "gpu" else "32-true",
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, callbacks=[timer], default_root_dir=tempfile.mkdtemp(),
    )
    trainer.fit(module, train_dataloaders=loader)
    params = sum(p.numel() for p in module.policy.parameters())  # global sizes (DTensors)
    timed = sorted(timer.times[1:]) or timer.times
    return {"step_s": timed[len(timed) // 2], "first_step_s": timer.times[0], "params": params,
            "tokens": batch * length, "losses": module.losses}


def _sync(accelerator: str) -> None:
    if accelerator == "gpu":
        torch.cuda.synchronize()


# --- the summary table ------------------------------------------------------------------------


def _frac(value: float | None, peak: float | None) -> float | None:
    return round(value / peak, 3) if value is not None and peak else None


def summary_rows(peaks: tuple[float, float] | None, pytest_result: tuple[str, float],
                 bench: list[dict] | str, sft: dict | str, sft_s: float) -> list[dict]:
    """One row per check: what ran, its result, achieved throughput and the fraction of peak.

    ``peaks`` = (bytes/s, bf16 FLOP/s) or None; ``bench`` = kernels.bench rows or an error line;
    ``sft`` = ``sft_step``'s dict or an error line.
    """
    bw, flops = peaks if peaks else (None, None)
    rows = [{"check": "pytest -m gpu tests/kernels", "result": pytest_result[0],
             "seconds": round(pytest_result[1], 1)}]
    if isinstance(bench, str):
        rows.append({"check": "kernels.bench (log-probs)", "result": bench})
    for r in bench if isinstance(bench, list) else []:
        seq = r["op"] == "sequence_logprobs"
        rate = r.get("gb_s") if seq else r.get("tflop_s")
        peak = (bw / 1e9 if bw else None) if seq else (flops / 1e12 if flops else None)
        rows.append({
            "check": f"{r['op']} {r['impl']} {r['shape']} {r['dtype']}",
            "result": f"fwd+bwd {r['fwd_bwd_ms']} ms, peak mem {r['peak_mem_mb']} MiB",
            "achieved": None if rate is None else f"{rate} {'GB/s' if seq else 'TFLOP/s'}",
            "fraction_of_peak": _frac(rate, peak),
        })
    if isinstance(sft, str):
        rows.append({"check": "SFT step, FSDP2, 1 GPU", "result": sft, "seconds": round(sft_s, 1)})
        return rows
    rate = 6 * sft["params"] * sft["tokens"] / sft["step_s"]  # dense-model training FLOP/s
    rows.append({
        "check": f"SFT step, FSDP2, 1 GPU, {sft['params'] / 1e6:.0f}M params, "
                 f"{sft['tokens']} tokens",
        "result": f"step {sft['step_s']:.3f} s (first {sft['first_step_s']:.1f} s), "
                  f"loss {sft['losses'][0]:.3f} -> {sft['losses'][-1]:.3f}",
        "seconds": round(sft_s, 1),
        "achieved": f"{rate / 1e12:.1f} TFLOP/s (6 P T)",
        "fraction_of_peak": _frac(rate, flops),
    })
    return rows


# --- main ----------------------------------------------------------------------------------


def _bench(tmp: Path) -> list[dict] | str:
    n, v, h, dtype = BENCH_SHAPE
    cmd = [sys.executable, "-m", "kernels.bench", "--shape", f"{n},{v},{h}", "--dtype", dtype,
           "--modules", "kernels.bench_logprob", "--out", str(tmp / "bench")]
    rc, text, _ = _run(cmd, BUDGET["bench"])
    if rc:
        return f"failed (rc {rc}): {text.strip().splitlines()[-1][:160] if text.strip() else ''}"
    return read_bench_csv(tmp / "bench.csv")


def _sft() -> tuple[dict | str, float]:
    rc, text, seconds = _run([sys.executable, "-m", "lightning_rlhf.gpu_check", "--sft-step"],
                             BUDGET["sft"])
    marks = [ln for ln in text.splitlines() if ln.startswith(SFT_MARK)]
    if rc or not marks:
        last = text.strip().splitlines()[-1][:160] if text.strip() else ""
        return f"failed (rc {rc}): {last}", seconds
    return json.loads(marks[-1][len(SFT_MARK):]), seconds


def main(argv: list[str] | None = None) -> int:
    """Run the three checks and print the summary table; 0 when all passed (or no CUDA)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft-step", action="store_true", help="(internal) run step 3 only")
    parser.add_argument("--tiny-cpu", action="store_true",
                        help="with --sft-step: a tiny model on CPU (tests the step's code)")
    args = parser.parse_args(argv)
    if args.sft_step:
        kind = "cpu" if args.tiny_cpu else "gpu"
        result = sft_step(TINY if args.tiny_cpu else QWEN2_05B, kind,
                          batch=2 if args.tiny_cpu else 8, length=16 if args.tiny_cpu else 1024,
                          steps=3)
        print(SFT_MARK + json.dumps(result), flush=True)
        return 0
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing run")
        return 0
    from kernels._bench_util import device_peaks
    from kernels.bench import to_markdown

    name = torch.cuda.get_device_name(0)
    t0 = time.perf_counter()
    rc, text, seconds = _run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p",
                              "no:cacheprovider", "tests/kernels"], BUDGET["pytest"])
    pytest_result = parse_pytest(text) if "No module named pytest" not in text else (
        "not run: pytest is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        bench = _bench(Path(tmp))
    sft, sft_s = _sft()
    peaks = device_peaks(name)
    rows = summary_rows(peaks, (pytest_result, seconds), bench, sft, sft_s)
    peak_text = (f"peak {peaks[0] / 1e12:.2f} TB/s, {peaks[1] / 1e12:.0f} bf16 TFLOP/s"
                 if peaks else "not in kernels._bench_util.DEVICE_PEAKS: no fractions")
    print(f"# gpu-check: {name} ({peak_text}), torch {torch.__version__}, "
          f"{time.perf_counter() - t0:.0f} s in all\n\n{to_markdown(rows)}")
    failed = rc != 0 or isinstance(bench, str) or isinstance(sft, str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
