"""``python -m lightning_rlhf.bench``: tokens/s of one SFT, A-LoL (live reference) and DPO update
on the same model and data (median of a few repetitions), as a Markdown table with ratios to SFT.

A-LoL's extra cost over SFT should be about one no-grad reference forward; DPO scores a chosen
and a rejected response per row with both policy and reference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.losses.alol import alol_loss
from lightning_rlhf.losses.preference import dpo_loss
from lightning_rlhf.losses.supervised import sft_loss
from lightning_rlhf.models import ModelConfig, frozen_copy, load_causal_lm, response_logprobs

MODEL = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 64,
}


def _batch(fmt: str, batch_size: int, device: str) -> dict:
    """One arithmetic batch of ``fmt`` ("response" or "pair"), tensors on ``device``."""
    dm = RLHFDataModule(format=fmt, num_train=batch_size, num_val=0, batch_size=batch_size)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _sft(policy, ref, b) -> torch.Tensor:
    return sft_loss(
        response_logprobs(policy, b["input_ids"], b["attention_mask"], b["response_mask"]),
        b["response_mask"],
    )[0]


def _alol(policy, ref, b) -> torch.Tensor:
    args = (b["input_ids"], b["attention_mask"], b["response_mask"])
    with torch.no_grad():
        ref_lp = response_logprobs(ref, *args)
    lp = response_logprobs(policy, *args)
    values = torch.full_like(b["reward"], 0.5)
    return alol_loss(lp, ref_lp, b["response_mask"], b["reward"], values, variant="a_lol")[0]


def _dpo(policy, ref, b) -> torch.Tensor:
    n, length = b["input_ids"].shape[0] * 2, b["input_ids"].shape[-1]
    args = [b[k].reshape(n, length) for k in ("input_ids", "attention_mask", "response_mask")]
    with torch.no_grad():
        ref_seq = response_logprobs(ref, *args).sum(-1).view(-1, 2)  # (B, 2)
    seq = response_logprobs(policy, *args).sum(-1).view(-1, 2)  # (B, 2)
    return dpo_loss(seq[:, 0], seq[:, 1], ref_seq[:, 0], ref_seq[:, 1])[0]


def time_update(loss_fn: Callable, policy, ref, batch: dict, reps: int, warmup: int = 2) -> float:
    """Median tokens/s of forward + backward + AdamW step over ``reps`` updates."""
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    tokens = int(batch["attention_mask"].sum())
    times = []
    for i in range(warmup + reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = loss_fn(policy, ref, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return tokens / statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_rlhf.bench", description=__doc__)
    parser.add_argument("--batch-size", type=int, default=64, help="rows (pairs for DPO)")
    parser.add_argument("--reps", type=int, default=7, help="timed updates per algorithm")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    response = _batch("response", args.batch_size, device)
    pair = _batch("pair", args.batch_size, device)
    tokenizer = RLHFDataModule().tokenizer
    rows = []
    for name, fn, batch in (
        ("SFT", _sft, response),
        ("A-LoL (live ref)", _alol, response),
        ("DPO", _dpo, pair),
    ):
        policy = load_causal_lm(ModelConfig(config=dict(MODEL)), tokenizer).to(device)
        ref = frozen_copy(policy)
        rows.append((name, time_update(fn, policy, ref, batch, args.reps)))
    base = rows[0][1]
    print(f"\n{device}, batch {args.batch_size}, median of {args.reps} updates\n")
    print("| update | tokens/s | vs SFT |\n|---|---|---|")
    for name, tps in rows:
        print(f"| {name} | {tps:,.0f} | {tps / base:.2f}x |")


if __name__ == "__main__":
    main()
