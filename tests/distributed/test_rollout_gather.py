"""Rollouts under FSDP2 gather the policy once (2 processes, gloo, no Lightning).

``strategies.gathered`` holds a full copy of the sharded policy for ``generate``: the number of
all-gathers per rollout is the number of FSDP2 units, whatever ``max_new_tokens`` is, where
FSDP2's default gathers every decoder layer again for each new token. Either way the tokens
equal a single-process rollout of the same weights with the same seed (bit-exact: the gathered
weights are the very same numbers, and the sampling draws from the same generator state).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow


def _count_all_gathers() -> list[int]:
    """Patch ``dist.all_gather_single`` (FSDP2's all-gather) to count its calls."""
    count, original = [0], dist.all_gather_single

    def counted(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    dist.all_gather_single = counted
    return count


def _worker(rank: int, world: int, port: int, out: str, new_tokens: list[int]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh

    from lightning_rlhf.data.tasks.arithmetic import build_tokenizer
    from lightning_rlhf.models.loading import ModelConfig, load_causal_lm
    from lightning_rlhf.rl.rollout import generate, left_pad_prompts
    from lightning_rlhf.strategies import fsdp_units, gathered, shard_causal_lm
    from tests.algorithms.e2e import TINY

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = load_causal_lm(ModelConfig(name_or_path=None, config=TINY), tokenizer)
    single = load_causal_lm(ModelConfig(name_or_path=None, config=TINY), tokenizer)
    single.load_state_dict(model.state_dict())
    shard_causal_lm(model, init_device_mesh("cpu", (world,)))
    ids, mask = left_pad_prompts(tokenizer, ["12+34=", "7+5=", "57+48=", "9+9="])
    count, result = _count_all_gathers(), {"units": len(fsdp_units(model)), "runs": []}
    for mode, tokens in [(mode, n) for mode in ("once", "per_layer") for n in new_tokens]:
        options = dict(max_new_tokens=tokens, do_sample=True, temperature=1.5)
        torch.manual_seed(1234)
        before = count[0]
        with gathered(model, enabled=mode == "once"):
            sharded = generate(model, tokenizer, ids, mask, **options)
        gathers = count[0] - before
        torch.manual_seed(1234)
        alone = generate(single, tokenizer, ids, mask, **options)
        result["runs"].append({
            "mode": mode, "max_new_tokens": tokens, "all_gathers": gathers,
            "equal": torch.equal(sharded.response_ids, alone.response_ids),
            "length": sharded.response_ids.shape[1],
        })  # fmt: skip
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def _run(tmp_path: Path, new_tokens: list[int]) -> dict:
    from tests.distributed.helpers import free_port

    out = tmp_path / "gathers.json"
    mp.spawn(_worker, args=(2, free_port(), str(out), new_tokens), nprocs=2, join=True)
    return json.loads(out.read_text())


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process groups on Linux only")
def test_rollout_gathers_once_and_matches_one_process(tmp_path):
    result = _run(tmp_path, [4, 12])
    units, runs = result["units"], result["runs"]
    assert units == 3  # 2 decoder layers + the root (embeddings, norm, lm_head)
    assert all(run["equal"] for run in runs), runs  # the same tokens as one process
    once = [run for run in runs if run["mode"] == "once"]
    assert [run["all_gathers"] for run in once] == [units, units], once  # not per token
    # FSDP2's default: every layer again for each forward (the prompt + one per new token)
    short, long = [run for run in runs if run["mode"] == "per_layer"]
    assert long["all_gathers"] > short["all_gathers"] > units, runs
    assert long["all_gathers"] >= 2 * (long["length"] - 1), runs
