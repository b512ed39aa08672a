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


def _worker(rank: int, world: int, port: int, out: str, new_tokens: list[int]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh

    from lightning_rlhf.bench_rollout import count_all_gathers
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
    count, result = count_all_gathers(), {"units": len(fsdp_units(model)), "runs": []}
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
    result["frozen"] = _frozen_checks(sharded, world)
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def _frozen_checks(rollout, world: int) -> dict[str, bool]:
    """A reference policy sharded with CPU offload and a sharded reward model give the numbers
    of their unsharded twins, and ``release`` leaves no unit gathered afterwards."""
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from lightning_rlhf.data.tasks.arithmetic import build_tokenizer
    from lightning_rlhf.models.loading import ModelConfig, frozen_copy, load_causal_lm
    from lightning_rlhf.models.scoring import response_logprobs, sequence_scores
    from lightning_rlhf.strategies import fsdp_units, release, shard_causal_lm
    from tests.algorithms.e2e import TINY

    mesh, tokenizer = init_device_mesh("cpu", (world,)), build_tokenizer()
    ids, mask, response = rollout.sequences()
    torch.manual_seed(7)
    ref = frozen_copy(load_causal_lm(ModelConfig(name_or_path=None, config=TINY), tokenizer))
    alone = response_logprobs(frozen_copy(ref), ids, mask, response)
    shard_causal_lm(ref, mesh, offload=True)
    with torch.no_grad():
        got = response_logprobs(ref, ids, mask, response)
    gathered_after_use = not _is_sharded(ref)  # FSDP2 keeps the root gathered after a forward
    release(ref)
    config = LlamaConfig(**{k: v for k, v in TINY.items() if k != "model_type"},
                         vocab_size=len(tokenizer), num_labels=1, pad_token_id=0)  # fmt: skip
    rm = AutoModelForSequenceClassification.from_config(config).eval()
    rm_alone = sequence_scores(frozen_copy(rm), ids, mask)
    shard_causal_lm(rm, mesh)
    with torch.no_grad():
        rm_got = sequence_scores(rm, ids, mask)
    release(rm)
    return {
        "reference_offloaded_equal": bool(torch.allclose(got, alone, atol=1e-6)),
        "reward_model_equal": bool(torch.allclose(rm_got, rm_alone, atol=1e-6)),
        "all_released": gathered_after_use and _is_sharded(ref) and _is_sharded(rm),
        "units": len(fsdp_units(ref)) + len(fsdp_units(rm)) == 6,
    }


def _is_sharded(model) -> bool:
    """Whether every parameter of a sharded model is its DTensor shard (FSDP2 swaps in plain
    tensors while a unit is gathered)."""
    from torch.distributed.tensor import DTensor

    return all(isinstance(p, DTensor) for p in model.parameters())


def _run(tmp_path: Path, new_tokens: list[int]) -> dict:
    from tests.distributed.helpers import free_port

    out = tmp_path / "gathers.json"
    mp.spawn(_worker, args=(2, free_port(), str(out), new_tokens), nprocs=2, join=True)
    return json.loads(out.read_text())


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process groups on Linux only")
def test_rollout_gathers_once_frozen_models_shard_offload_and_release(tmp_path):
    result = _run(tmp_path, [4, 12])
    units, runs = result["units"], result["runs"]
    assert result["frozen"] == dict.fromkeys(
        ("reference_offloaded_equal", "reward_model_equal", "all_released", "units"), True
    )
    assert units == 3  # 2 decoder layers + the root (embeddings, norm, lm_head)
    assert all(run["equal"] for run in runs), runs  # the same tokens as one process
    once = [run for run in runs if run["mode"] == "once"]
    assert [run["all_gathers"] for run in once] == [units, units], once  # not per token
    # FSDP2's default: every layer again for each forward (the prompt + one per new token)
    short, long = [run for run in runs if run["mode"] == "per_layer"]
    assert long["all_gathers"] > short["all_gathers"] > units, runs
    assert long["all_gathers"] >= 2 * (long["length"] - 1), runs
