"""`python -m kernels.bench`: speed and peak memory of every kernels op vs naive PyTorch and peers.

Runs each benchmark module's ``run(device, quick) -> list[dict]`` (kernels.bench_logprob,
kernels.bench_ratio), prints one Markdown table, and with ``--out PATH`` writes PATH.md and
PATH.csv. Ratio columns compare each row with the naive row of the same op and shape.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
from pathlib import Path

import torch

MODULES = ("kernels.bench_logprob", "kernels.bench_ratio")


def collect(
    device: str, quick: bool, modules: tuple[str, ...] = MODULES, shape: tuple | None = None
) -> tuple[list[dict], list[str]]:
    """Rows from every benchmark module that imports, and a note for each that does not;
    ``shape`` = (N, V, H, dtype) sizes the log-prob benchmark."""
    rows: list[dict] = []
    notes: list[str] = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            notes.append(f"{name} not run: {e}")
            continue
        extra = {"shape": shape} if shape is not None and name == "kernels.bench_logprob" else {}
        rows.extend(mod.run(device, quick, **extra))
    return rows, notes


def _shape_arg(text: str) -> tuple[int, int, int]:
    """``N,V,H`` -> (N, V, H); one clear line if it is not three positive integers."""
    try:
        n, v, h = (int(x) for x in text.split(","))
    except ValueError:
        msg = f"--shape wants N,V,H (three integers), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if min(n, v, h) <= 0:
        raise argparse.ArgumentTypeError(f"--shape values must be positive, got {text!r}")
    return n, v, h


def _columns(rows: list[dict]) -> list[str]:
    """Union of the rows' keys, in first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    return cols


def _cell(v: object) -> str:
    return "" if v is None else str(v)


def to_markdown(rows: list[dict]) -> str:
    """One GitHub Markdown table over the union of the rows' columns."""
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
    return buf.getvalue()


def _header(device: str, quick: bool) -> str:
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    threads = torch.get_num_threads()
    return (f"# kernels benchmark: {name} ({device}), torch {torch.__version__}, "
            f"{threads} CPU threads, {'quick' if quick else 'full'} shapes")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the benchmarks, print (and optionally save) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes, fewer repetitions")
    parser.add_argument("--out", type=Path, help="write OUT.md and OUT.csv as well")
    parser.add_argument("--shape", type=_shape_arg, help="N,V,H of the log-prob benchmark")
    parser.add_argument("--dtype", default="bf16", choices=("fp32", "bf16", "fp16"),
                        help="dtype of the log-prob benchmark when --shape is given")
    parser.add_argument("--modules", nargs="+", default=list(MODULES), choices=MODULES)
    args = parser.parse_args(argv)
    shape = (*args.shape, args.dtype) if args.shape else None
    rows, notes = collect(args.device, args.quick, tuple(args.modules), shape)
    text = "\n\n".join([_header(args.device, args.quick), to_markdown(rows), *notes]) + "\n"
    print(text)
    if args.out:
        stem = args.out.with_suffix("") if args.out.suffix in (".md", ".csv") else args.out
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".csv").write_text(to_csv(rows))


if __name__ == "__main__":
    main()
