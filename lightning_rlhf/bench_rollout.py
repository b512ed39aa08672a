"""``python -m lightning_rlhf.bench_rollout``: MA-PPO's rollout under FSDP2, gathering the policy
once per ``generate`` vs FSDP2's per-layer gathering (one all-gather of every layer per new token).

Starts ``--processes`` CPU processes (gloo; on a GPU machine ``--device cuda`` and nccl), builds
the MA-PPO module with a policy of the given size on each, shards it as ``configure_model`` does
under FSDP2, and times ``MAPPO.sample`` (its rollout) in both modes, alternating them ``--repeats``
times in the same processes (these machines are noisy; the ratio is what to read). Prints a
Markdown table: all-gathers per rollout (counted on FSDP2's collective), seconds per rollout
(median over repeats, rank 0), and the ratio per-layer / once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MODES = ("per_layer", "once")


def _policy_config(hidden: int, layers: int) -> dict:
    return {"model_type": "llama", "hidden_size": hidden, "intermediate_size": 3 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": max(1, hidden // 64),
            "num_key_value_heads": max(1, hidden // 64), "max_position_embeddings": 512,
            "tie_word_embeddings": False}  # fmt: skip


def count_all_gathers() -> list[int]:
    """Count calls of ``dist.all_gather_single`` (FSDP2's all-gather) from now on, in this
    process: ``count[0]`` is the number so far (the tests use it too)."""
    count, original = [0], dist.all_gather_single

    def counted(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    dist.all_gather_single = counted
    return count


def _build(args: argparse.Namespace, world: int):
    """The MA-PPO module, its policy sharded over the ranks, and a prompt batch."""
    from torch.distributed.device_mesh import init_device_mesh

    from lightning_rlhf.algorithms.ppo import MAPPO
    from lightning_rlhf.data.tasks.arithmetic import build_tokenizer
    from lightning_rlhf.models import ModelConfig
    from lightning_rlhf.rl.rollout import left_pad_prompts

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    policy = ModelConfig(config=_policy_config(args.hidden, args.layers))
    module = MAPPO(policy, reward="lightning_rlhf.data.tasks.arithmetic:reward",
                   max_new_tokens=args.new_tokens)  # fmt: skip
    module.attach_tokenizer(tokenizer)
    module.configure_model()
    module.to(args.device)
    module.shard_models(init_device_mesh(args.device, (world,)))
    prompts = [f"{a}+{b}=" for a, b in zip(range(10, 10 + args.batch), range(50, 50 + args.batch))]
    ids, mask = left_pad_prompts(tokenizer, prompts, device=args.device)
    return module, ids, mask


def _worker(rank: int, world: int, port: int, out: str, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    backend = "nccl" if args.device == "cuda" else "gloo"
    if args.device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world)
    from lightning_rlhf.strategies import release

    module, ids, mask = _build(args, world)
    count = count_all_gathers()
    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    gathers: dict[str, int] = {}
    lengths: dict[str, int] = {}
    for repeat in range(args.repeats + 1):  # the first round warms up and is dropped
        for mode in MODES:
            module.hparams.rollout_gather = mode
            release(module.policy)  # both modes start from a fully sharded policy
            torch.manual_seed(repeat)
            before, start = count[0], time.perf_counter()
            rollout = module.sample(ids, mask)
            if args.device == "cuda":
                torch.cuda.synchronize()
            if repeat:
                seconds[mode].append(time.perf_counter() - start)
            gathers[mode] = count[0] - before
            lengths[mode] = rollout.response_ids.shape[1]
    if rank == 0:
        result = {"seconds": seconds, "gathers": gathers, "lengths": lengths}
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.spawn(_worker, args=(args.processes, free_port(), out, args), nprocs=args.processes)
        result = json.loads(Path(out).read_text())
    print(format_table(result, args))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a process group of this machine)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def format_table(result: dict, args: argparse.Namespace) -> str:
    """The Markdown table of one benchmark run."""
    median = {m: statistics.median(result["seconds"][m]) for m in MODES}
    lines = [
        f"MA-PPO rollout, FSDP2 over {args.processes} {args.device} processes: policy hidden "
        f"{args.hidden} x {args.layers} layers, {args.batch} prompts x {args.new_tokens} new "
        f"tokens, median of {args.repeats}",
        "",
        "| gathering | decoded tokens | all-gathers per rollout | seconds per rollout |",
        "|---|---:|---:|---:|",
    ]
    for mode in MODES:
        gathers, length = result["gathers"][mode], result["lengths"][mode]
        lines.append(f"| {mode} | {length} | {gathers} | {median[mode]:.3f} |")
    ratio = median["per_layer"] / median["once"]
    lines.append(f"\nper-layer / once: {ratio:.2f}x the time")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
