"""kernels.macro_gae (torch backend and interpreted Triton) against the Python-loop reference,
the textbook token-level GAE (n = 1, bit-exact) and the hand-worked check of losses/README.md §5."""

from __future__ import annotations

import pytest
import torch

from kernels import macro_gae
from kernels.reference import gae_reverse_loop_ref, macro_gae_ref

BACKENDS = ["torch", "triton"]
SHAPES = [(1, 1), (3, 17), (3, 129), (2, 40)]


def _random_batch(B: int, T: int, seed: int, dtype=torch.float32, id_dtype=torch.int64):
    """Rewards, values, mask, segment_ids with mixed padding sides, a fully masked row (B > 1),
    random macro lengths, ids that start anywhere and jump, and garbage at masked positions."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64).to(dtype)
    values = torch.randn(B, T, generator=g, dtype=torch.float64).to(dtype)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        n = int(torch.randint(1, T + 1, (1,), generator=g))
        if b % 2:
            mask[b, T - n:] = True  # left padding (generation)
        else:
            mask[b, :n] = True  # right padding (training)
    if B > 1:
        mask[1] = False  # a fully masked row
    jumps = torch.randint(1, 4, (B, T), generator=g) * (torch.rand(B, T, generator=g) < 0.35)
    segment_ids = (jumps.cumsum(dim=1) + torch.randint(0, 9, (B, 1), generator=g)).to(id_dtype)
    segment_ids[~mask] = torch.randint(-5, 50, (int((~mask).sum()),), generator=g).to(id_dtype)
    values = values.masked_fill(~mask, float("nan"))  # must be ignored
    return rewards, values, mask, segment_ids


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("value_agg", ["mean", "position", "first"])
@pytest.mark.parametrize("reward_agg", ["sum", "mean"])
def test_matches_reference(backend, shape, value_agg, reward_agg):
    B, T = shape
    r, v, m, s = _random_batch(B, T, seed=B * 1000 + T)
    kw = dict(gamma=0.97, lam=0.9, value_agg=value_agg, reward_agg=reward_agg)
    adv, ret = macro_gae(r, v, m, s, backend=backend, **kw)
    adv_ref, ret_ref = macro_gae_ref(r, v, m, s, **kw)
    assert adv.dtype == ret.dtype == torch.float32
    torch.testing.assert_close(adv, adv_ref)
    torch.testing.assert_close(ret, ret_ref)
    assert not adv[~m].any() and not ret[~m].any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_input_dtypes(backend, dtype, id_dtype):
    r, v, m, s = _random_batch(3, 33, seed=7, dtype=dtype, id_dtype=id_dtype)
    adv, ret = macro_gae(r, v, m, s, backend=backend)
    adv_ref, ret_ref = macro_gae_ref(r, v, m, s)  # the same low-precision inputs, read in fp32
    torch.testing.assert_close(adv, adv_ref)
    torch.testing.assert_close(ret, ret_ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value_agg", ["mean", "position", "first"])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float64])
def test_one_token_per_macro_is_textbook_gae_bit_exact(backend, value_agg, in_dtype):
    """n = 1 is token-level GAE exactly: the same fp32 operations in the same order.

    Outputs are fp32, so fp64 inputs are compared with the textbook loop on the same inputs read
    in fp32. (Under TRITON_INTERPRET the scan runs sequentially, so Triton is exact here too; the
    compiled scan composes affine maps in a tree, see the gpu test.)
    """
    r, v, m, _ = _random_batch(3, 129, seed=11, dtype=in_dtype)
    ids = torch.arange(129).expand(3, 129)
    adv, ret = macro_gae(r, v, m, ids, gamma=0.99, lam=0.95, value_agg=value_agg,
                         backend=backend)
    adv_tb, ret_tb = gae_reverse_loop_ref(r, v, m, gamma=0.99, lam=0.95)
    assert torch.equal(adv, adv_tb)
    assert torch.equal(ret, ret_tb)


# Worked check of losses/README.md §5, tokens counted from t = 1: V_t = 0.1 t - 0.3 = -0.2 .. 0.9,
# macro sizes [5, 5, 1, 1], reward 1.7 on token 12, gamma 1, lambda 0.95.
#   "mean":  V = [0.0, 0.5, 0.8, 0.9]  (means of -0.2..0.2 and 0.3..0.7), R = [0, 0, 0, 1.7]
#     A4 = 1.7 - 0.9 = 0.8
#     A3 = (0.9 - 0.8) + 0.95 * 0.8 = 0.86
#     A2 = (0.8 - 0.5) + 0.95 * 0.86 = 1.117
#     A1 = (0.5 - 0.0) + 0.95 * 1.117 = 1.56115;  Ret = A + V = [1.56115, 1.617, 1.66, 1.7]
#   "first": V = [-0.2, 0.3, 0.8, 0.9]
#     A4 = 0.8, A3 = 0.86, A2 = (0.8 - 0.3) + 0.817 = 1.317, A1 = (0.3 + 0.2) + 0.95 * 1.317
#     = 1.75115
#   "position": weights 1, 1/2, .., 1/5 (sum 137/60): V1 = -0.185 * 60/137 = -11.1/137,
#     V2 = 0.95666.. * 60/137 = 57.4/137; A2 = (0.8 - 57.4/137) + 0.817,
#     A1 = (57.4/137 + 11.1/137) + 0.95 * A2
WORKED = {
    "mean": ([1.56115, 1.117, 0.86, 0.8], [0.0, 0.5, 0.8, 0.9]),
    "first": ([1.75115, 1.317, 0.86, 0.8], [-0.2, 0.3, 0.8, 0.9]),
    "position": (
        [68.5 / 137 + 0.95 * (1.617 - 57.4 / 137), 1.617 - 57.4 / 137, 0.86, 0.8],
        [-11.1 / 137, 57.4 / 137, 0.8, 0.9],
    ),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value_agg", ["mean", "first", "position"])
@pytest.mark.parametrize("pad", ["none", "left", "right"])
def test_worked_check(backend, value_agg, pad):
    t = torch.arange(1, 13, dtype=torch.float32)
    values, rewards = 0.1 * t - 0.3, torch.zeros(12)
    rewards[-1] = 1.7
    ids = torch.tensor([0] * 5 + [1] * 5 + [2, 3])
    macro_a, macro_v = WORKED[value_agg]
    sizes = [5, 5, 1, 1]
    want_a = torch.tensor(macro_a).repeat_interleave(torch.tensor(sizes))
    want_r = want_a + torch.tensor(macro_v).repeat_interleave(torch.tensor(sizes))
    n_pad = {"none": 0, "left": 3, "right": 4}[pad]
    cat = (lambda x, fill: torch.cat([torch.full((n_pad,), fill, dtype=x.dtype), x])
           if pad == "left" else torch.cat([x, torch.full((n_pad,), fill, dtype=x.dtype)]))
    mask = cat(torch.ones(12, dtype=torch.bool), False)
    r, v, s = (cat(x, 9)[None] for x in (rewards, values, ids))
    adv, ret = macro_gae(r, v, mask[None], s, gamma=1.0, lam=0.95, value_agg=value_agg,
                         backend=backend)
    torch.testing.assert_close(adv[0, mask], want_a)
    torch.testing.assert_close(ret[0, mask], want_r)
    assert not adv[0, ~mask].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_reward_mean_and_holes(backend):
    """reward_agg="mean" divides R_k by the macro size; a masked hole inside a macro is skipped."""
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0, 6.0]])
    values = torch.zeros(1, 5)
    mask = torch.tensor([[1, 1, 0, 1, 1]])
    ids = torch.tensor([[0, 0, 0, 0, 1]])  # macro 0 = tokens 0, 1, 3; macro 1 = token 4
    adv, _ = macro_gae(rewards, values, mask, ids, gamma=1.0, lam=0.5, reward_agg="mean",
                       backend=backend)
    # R = [(1 + 2 + 4) / 3, 6]; A1 = 6, A0 = 7/3 + 0.5 * 6
    torch.testing.assert_close(adv, torch.tensor([[7 / 3 + 3.0, 7 / 3 + 3.0, 0.0, 7 / 3 + 3.0,
                                                  6.0]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_masked_and_bad_args(backend):
    z = torch.zeros(2, 5)
    adv, ret = macro_gae(z + 1, z + 1, z.bool(), z.long(), backend=backend)
    assert torch.equal(adv, z) and torch.equal(ret, z)
    with pytest.raises(ValueError, match="value_agg"):
        macro_gae(z, z, z, z.long(), value_agg="median", backend=backend)
    with pytest.raises(ValueError, match="shape"):
        macro_gae(z, z[:, :3], z, z.long(), backend=backend)


@pytest.mark.gpu
def test_compiled_triton_on_cuda():
    """Compiled kernel: the tree scan reorders the recurrence, so n = 1 is close, not bit-exact."""
    r, v, m, s = (x.cuda() for x in _random_batch(3, 129, seed=5))
    adv, ret = macro_gae(r, v, m, s, backend="triton")
    adv_ref, ret_ref = macro_gae_ref(r, v, m, s)
    torch.testing.assert_close(adv, adv_ref)
    torch.testing.assert_close(ret, ret_ref)
    ids = torch.arange(129, device="cuda").expand(3, 129)
    adv, _ = macro_gae(r, v, m, ids, gamma=0.99, backend="triton")
    torch.testing.assert_close(adv, gae_reverse_loop_ref(r, v, m, gamma=0.99)[0])
