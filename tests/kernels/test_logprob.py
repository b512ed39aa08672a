"""kernels.logprob vs the fp32 references: forward and every input gradient, both backends.

Tolerance (STYLE.md habit 6): the error of each backend against the fp32 reference must be at most
2x the error of plain torch doing the same computation in the input dtype, plus a tiny floor.
Triton runs in the interpreter on CPU (tests/conftest.py); the ``gpu`` tests run it compiled.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from kernels import linear_logprobs, sequence_logprobs
from kernels.reference import linear_logprobs_ref, sequence_logprobs_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BACKENDS = ["torch", "triton"]
IGN = -100


def _floor(ref: torch.Tensor) -> float:
    """A tiny absolute floor, relative to the reference's magnitude (fp32 rounding noise)."""
    return 2e-6 * (1.0 + ref.abs().max().item()) if ref.numel() else 0.0


def _assert_close(name: str, got: torch.Tensor, ref: torch.Tensor, low: torch.Tensor) -> None:
    """max|got - ref| <= 2 max|low - ref| + floor; print the worst mismatch if not.

    ``low`` is plain torch in the low-precision dtype. Its error is taken as at least that of
    rounding the exact answer once to plain torch's output dtype: no implementation returning
    that dtype can do better, and a lucky rounding on a few elements must not set the bar.
    """
    dtype = low.dtype
    got, ref, low = got.float(), ref.float(), low.float()
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values {got}"
    if ref.numel() == 0:
        return
    err = (got - ref).abs()
    base = max((low - ref).abs().max().item(), (ref.to(dtype).float() - ref).abs().max().item())
    bound = 2 * base + _floor(ref)
    worst = int(err.argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), err.shape))
    assert err.max().item() <= bound, (
        f"{name}: max err {err.max().item():.3e} > bound {bound:.3e} at {idx}: "
        f"got {got[idx].item():.6g}, ref {ref[idx].item():.6g}, plain torch {low[idx].item():.6g}"
    )


def _outputs_and_grads(fn, inputs: list[torch.Tensor], cotangents: list[torch.Tensor]):
    """Run fn(*inputs) (tensor or tuple); return outputs and grads of sum(out * cot) per input."""
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    out = list(out) if isinstance(out, tuple) else [out]
    loss = sum((o.float() * c).sum() for o, c in zip(out, cotangents))
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [o.detach() for o in out], [torch.zeros_like(x) if g is None else g for x, g in
                                       zip(inputs, grads)]


def _targets(shape: tuple[int, ...], V: int, gen: torch.Generator, ignore: str) -> torch.Tensor:
    """Random targets with some ignore_index positions; ``ignore`` in {"some", "row", "all"}."""
    t = torch.randint(0, V, shape, generator=gen)
    if ignore == "all":
        return torch.full_like(t, IGN)
    flat = t.view(-1)
    flat[:: 5] = IGN
    if ignore == "row" and t.dim() == 2 and t.shape[0] > 1:
        t[1] = IGN
    return t


# (name, logits shape (B, T, V) or (N, V), temperature, entropy, ignore, view)
SEQ_CASES = [
    ("odd", (3, 47, 1000), 0.7, True, "row", None),
    ("v1", (2, 5, 1), 1.0, True, "some", None),
    ("v7_t1", (4, 1, 7), 1.0, False, "some", None),
    ("all_ignored", (2, 3, 31), 1.3, True, "all", None),
    ("slice_view", (2, 11, 129), 0.9, True, "some", "slice"),
    ("permuted_view", (3, 5, 67), 1.0, True, "row", "permute"),
    ("flat_2d", (13, 250), 2.0, True, "some", None),
    ("v32003", (2, 6, 32003), 1.3, True, "some", None),
]


def _seq_inputs(shape, view, dtype, gen):
    """Logits in ``dtype`` (possibly a strided view) and their targets."""
    if view == "slice":  # logits[:, :-1], as when shifting for next-token prediction
        B, T, V = shape
        base = torch.randn(B, T + 1, V, generator=gen) * 3
        logits = base.to(dtype)[:, :-1]  # (B, T, V), rows not evenly strided
    elif view == "permute":  # vocabulary not the innermost dimension
        B, T, V = shape
        logits = (torch.randn(V, B, T, generator=gen) * 3).to(dtype).permute(1, 2, 0)  # (B, T, V)
    else:
        logits = (torch.randn(*shape, generator=gen) * 3).to(dtype)
    return logits, shape


def _plain_z(x: torch.Tensor, temp: float, scale: float | None, cap: float | None):
    """softcap(scale * x) / temp in x's own dtype, as plain torch (or a model) computes it."""
    if scale is not None:
        x = x * scale
    if cap is not None:
        x = cap * torch.tanh(x / cap)
    return x / temp


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", SEQ_CASES, ids=lambda c: c[0])
def test_sequence_logprobs(case, dtype, backend):
    _check_sequence(case, dtype, backend)


def _check_sequence(case, dtype, backend, scale=None, cap=None, device="cpu"):
    """Forward and grad of ``sequence_logprobs`` vs the fp32 reference, bar = plain torch."""
    name, shape, temp, ent, ignore, view = case
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    logits, shape = _seq_inputs(shape, view, dtype, gen)
    targets = _targets(shape[:-1], shape[-1], gen, ignore).to(device)
    n_out = 2 if ent else 1
    cots = [torch.randn(shape[:-1], generator=gen).to(device) for _ in range(n_out)]
    logits = logits.to(device)
    kw = {"temperature": temp, "ignore_index": IGN, "return_entropy": ent,
          "logit_scale": scale, "softcap": cap}

    def ours(x):
        return sequence_logprobs(x, targets, backend=backend, chunk_rows=5, **kw)

    def plain(x):  # plain torch in the input dtype: the bar we hold ourselves to
        logp_all = torch.log_softmax(_plain_z(x, temp, scale, cap), dim=-1)  # (B, T, V) in dtype
        valid = targets != IGN
        lp = logp_all.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
        lp = torch.where(valid, lp, 0)
        if not ent:
            return lp
        return lp, torch.where(valid, -(logp_all.exp() * logp_all).sum(-1), 0)

    got, g_got = _outputs_and_grads(ours, [logits], cots)
    ref, g_ref = _outputs_and_grads(lambda x: sequence_logprobs_ref(x, targets, **kw),
                                    [logits.float()], cots)
    low, g_low = _outputs_and_grads(plain, [logits], cots)
    assert all(o.dtype == torch.float32 for o in got)
    assert g_got[0].dtype == dtype
    for i, (o, r, lo) in enumerate(zip(got, ref, low)):
        _assert_close(["logp", "entropy"][i], o, r, lo)
    _assert_close("grad_logits", g_got[0], g_ref[0], g_low[0])
    ignored = targets == IGN
    assert (got[0][ignored] == 0).all() and (g_got[0][ignored] == 0).all()


# (name, hidden shape (B, T, H) or (N, H), V, bias, temperature, entropy, ignore, view, chunk)
LIN_CASES = [
    ("odd", (3, 47, 16), 1000, True, 0.7, True, "row", None, 32),
    ("v7_t1_nobias", (4, 1, 8), 7, False, 1.0, False, "some", None, 3),
    ("v1", (2, 3, 4), 1, True, 1.0, True, "some", None, 4),
    ("all_ignored", (2, 3, 8), 31, True, 1.3, True, "all", None, None),
    ("slice_view", (2, 9, 12), 129, False, 0.9, True, "some", "slice", 7),
    ("flat_2d", (13, 24), 250, True, 2.0, False, "some", None, 5),
    ("v32003", (2, 8, 8), 32003, True, 1.3, True, "some", None, 5),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", LIN_CASES, ids=lambda c: c[0])
def test_linear_logprobs(case, dtype, backend):
    _check_linear(case, dtype, backend)


def _check_linear(case, dtype, backend, scale=None, cap=None, device="cpu"):
    """Forward and every input grad of ``linear_logprobs`` vs the fp32 reference."""
    name, hshape, V, has_bias, temp, ent, ignore, view, chunk = case
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()) + 1)
    H = hshape[-1]
    if view == "slice":
        hidden = torch.randn(hshape[0], hshape[1] + 1, H, generator=gen).to(dtype)[:, :-1]
    else:
        hidden = torch.randn(*hshape, generator=gen).to(dtype)
    weight = (torch.randn(V, H, generator=gen) * (2 / H**0.5)).to(dtype)
    bias = torch.randn(V, generator=gen).to(dtype) if has_bias else None
    targets = _targets(hidden.shape[:-1], V, gen, ignore).to(device)
    cots = [torch.randn(targets.shape, generator=gen).to(device) for _ in range(2 if ent else 1)]
    hidden, weight = hidden.to(device), weight.to(device)
    bias = None if bias is None else bias.to(device)
    kw = {"temperature": temp, "ignore_index": IGN, "return_entropy": ent,
          "logit_scale": scale, "softcap": cap}
    inputs = [hidden, weight] + ([bias] if has_bias else [])

    def ours(h, w, b=None):
        return linear_logprobs(h, w, targets, bias=b, backend=backend, chunk_size=chunk, **kw)

    def plain(h, w, b=None):  # full logits and log-softmax in the input dtype
        logits = h @ w.t() if b is None else h @ w.t() + b  # (B, T, V)
        logp_all = torch.log_softmax(_plain_z(logits, temp, scale, cap), dim=-1)  # (B, T, V)
        valid = targets != IGN
        lp = torch.where(valid, logp_all.gather(-1, targets.clamp(min=0)[..., None])[..., 0], 0)
        if not ent:
            return lp
        return lp, torch.where(valid, -(logp_all.exp() * logp_all).sum(-1), 0)

    got, g_got = _outputs_and_grads(ours, inputs, cots)
    ref, g_ref = _outputs_and_grads(
        lambda h, w, b=None: linear_logprobs_ref(h, w, targets, bias=b, **kw),
        [x.float() for x in inputs], cots,
    )
    low, g_low = _outputs_and_grads(plain, inputs, cots)
    for i, (o, r, lo) in enumerate(zip(got, ref, low)):
        _assert_close(["logp", "entropy"][i], o, r, lo)
    for gname, g, r, lo, x in zip(["grad_hidden", "grad_weight", "grad_bias"], g_got, g_ref,
                                  g_low, inputs):
        assert g.dtype == x.dtype, f"{gname}: dtype {g.dtype} != input dtype {x.dtype}"
        _assert_close(gname, g, r, lo)


# Soft-capping and logit scaling: small odd shapes (the interpreter is slow), logits large enough
# for the cap to bite (|scale * x| up to ~4c). (name, logit_scale, softcap): scale alone
# (Cohere/Granite), cap alone (Gemma), both; each on a 3-D strided case with temperature and
# entropy, and the combination also on a flat 2-D case without them.
TRANSFORMS = [("scale", 0.37, None), ("cap", None, 2.5), ("scale_cap", 3.0, 4.0)]
SEQ_TF_CASES = [(("tf_odd", (3, 7, 67), 0.7, True, "row", "slice"), t) for t in TRANSFORMS] + [
    (("tf_flat", (9, 33), 1.0, False, "some", None), TRANSFORMS[2])]
LIN_TF_CASES = [(("tf_odd", (3, 11, 16), 131, True, 0.7, True, "row", None, 8), t)
                for t in TRANSFORMS] + [
    (("tf_flat", (9, 8), 33, False, 1.0, False, "some", None, 3), TRANSFORMS[2])]


def _tf_id(pair) -> str:
    return f"{pair[0][0]}-{pair[1][0]}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("pair", SEQ_TF_CASES, ids=_tf_id)
def test_sequence_logprobs_softcap_scale(pair, dtype, backend):
    (case, (_, scale, cap)) = pair
    _check_sequence(case, dtype, backend, scale=scale, cap=cap)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("pair", LIN_TF_CASES, ids=_tf_id)
def test_linear_logprobs_softcap_scale(pair, dtype, backend):
    (case, (_, scale, cap)) = pair
    _check_linear(case, dtype, backend, scale=scale, cap=cap)


def test_reference_softcap_scale_by_hand():
    """The reference is log_softmax(c tanh(s z / c) / T), entropy -sum p log p, worked in fp64."""
    z = torch.tensor([[1.5, -2.0, 30.0, 0.25], [-40.0, 3.0, 0.0, 7.0]])  # (N, V)
    s, c, T = 0.5, 5.0, 2.0
    capped = [[c * math.tanh(s * v / c) / T for v in row] for row in z.tolist()]
    lse = [math.log(sum(math.exp(u) for u in row)) for row in capped]
    targets = torch.tensor([2, 0])
    want = torch.tensor([capped[i][int(t)] - lse[i] for i, t in enumerate(targets)],
                        dtype=torch.float64)
    want_ent = torch.tensor([-sum(math.exp(u - m) * (u - m) for u in row)
                             for row, m in zip(capped, lse)], dtype=torch.float64)
    logp, ent = sequence_logprobs_ref(z, targets, temperature=T, logit_scale=s, softcap=c,
                                      return_entropy=True)
    torch.testing.assert_close(logp.double(), want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ent.double(), want_ent, atol=1e-6, rtol=1e-6)
    assert logp[0] > -1.0  # the capped 30 still wins, but by far less than uncapped (~ -1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_vocabulary_minus_inf(backend):
    """-inf logits (a masked vocabulary) get p = 0 and gradient 0; the rest is a finite softmax."""
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 6, 40, generator=gen) * 3
    keep = torch.arange(40) % 3 != 0  # (V,) columns that stay finite
    logits[..., ~keep] = float("-inf")
    sub_targets = torch.randint(0, int(keep.sum()), (2, 6), generator=gen)
    targets = keep.nonzero().squeeze(1)[sub_targets]  # (B, T) same tokens, full-vocab ids
    targets[0, 3] = IGN
    sub_targets[0, 3] = IGN
    cots = [torch.randn(2, 6, generator=gen) for _ in range(2)]
    kw = {"temperature": 0.8, "return_entropy": True}
    got, g_got = _outputs_and_grads(
        lambda x: sequence_logprobs(x, targets, backend=backend, **kw), [logits], cots)
    ref, g_ref = _outputs_and_grads(
        lambda x: sequence_logprobs_ref(x, sub_targets, **kw), [logits[..., keep]], cots)
    for name, o, r in zip(["logp", "entropy"], got, ref):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    assert (g_got[0][..., ~keep] == 0).all()
    torch.testing.assert_close(g_got[0][..., keep], g_ref[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_saves_no_vocab_sized_tensor(backend):
    """Backward state is O(B*T) beyond the inputs: no fp32 (B, T, V) copy, no (N, V) logits."""
    B, T, V, H = 2, 8, 300, 16
    logits = torch.randn(B, T, V, requires_grad=True)
    targets = torch.randint(0, V, (B, T))
    logp, ent = sequence_logprobs(logits, targets, backend=backend, return_entropy=True)
    saved = [t for t in logp.grad_fn.saved_tensors if t.data_ptr() != logits.data_ptr()]
    assert sum(t.numel() for t in saved) <= 3 * B * T, [tuple(t.shape) for t in saved]
    hidden = torch.randn(B, T, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    logp = linear_logprobs(hidden, weight, targets, backend=backend, chunk_size=4)
    node = logp.grad_fn
    while not hasattr(node, "saved_tensors"):  # step past the (N,) -> (B, T) view
        node = node.next_functions[0][0]
    saved = [t for t in node.saved_tensors if t is not None]  # bias=None, entropy=None
    assert max(t.numel() for t in saved) == V * H  # the weight itself; nothing (N, V)
    assert sum(t.numel() for t in saved) <= V * H + B * T * H + 3 * B * T


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_frozen_weight_and_no_grad(backend):
    """Only requested gradients are formed; a frozen lm_head gives grad_hidden alone."""
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 5, 8, generator=gen, requires_grad=True)
    weight = torch.randn(50, 8, generator=gen)  # frozen
    targets = torch.randint(0, 50, (3, 5), generator=gen)
    logp = linear_logprobs(hidden, weight, targets, backend=backend, chunk_size=4)
    (g,) = torch.autograd.grad(logp.sum(), hidden)
    h_ref = hidden.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(linear_logprobs_ref(h_ref, weight, targets).sum(), h_ref)
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        out = sequence_logprobs(torch.randn(2, 3, 9), torch.zeros(2, 3, dtype=torch.long),
                                backend=backend)
    assert out.shape == (2, 3) and not out.requires_grad


def test_shape_and_type_errors():
    """Clear errors for mismatched shapes, float targets and a non-positive temperature."""
    logits = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="targets"):
        sequence_logprobs(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        sequence_logprobs(logits, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="temperature"):
        sequence_logprobs(logits, torch.zeros(2, 3, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="weight"):
        linear_logprobs(torch.randn(2, 3, 4), torch.randn(5, 6), torch.zeros(2, 3).long())
    for bad in ({"softcap": 0.0}, {"logit_scale": -1.0}, {"softcap": float("inf")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            sequence_logprobs(logits, torch.zeros(2, 3, dtype=torch.long), **bad)


# --- compiled Triton on a GPU (skipped here; run with TRITON_INTERPRET=0 pytest -m gpu) ---------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shape", [(3, 47, 1000), (4, 512, 32003)], ids=["odd", "large"])
def test_sequence_logprobs_gpu(shape, dtype):
    gen = torch.Generator().manual_seed(11)
    logits = (torch.randn(shape[0], shape[1] + 1, shape[2], generator=gen) * 3).to(dtype)
    logits = logits.cuda()[:, :-1]  # (B, T, V) non-contiguous view
    targets = _targets(shape[:-1], shape[-1], gen, "row").cuda()
    cots = [torch.randn(shape[:-1], generator=gen).cuda() for _ in range(2)]
    kw = {"temperature": 0.7, "ignore_index": IGN, "return_entropy": True}

    def plain(x):
        logp_all = torch.log_softmax(x / 0.7, dim=-1)  # (B, T, V) in dtype
        valid = targets != IGN
        lp = logp_all.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
        ent = -(logp_all.exp() * logp_all).sum(-1)
        return torch.where(valid, lp, 0), torch.where(valid, ent, 0)

    for backend in BACKENDS:
        got, g_got = _outputs_and_grads(
            lambda x, b=backend: sequence_logprobs(x, targets, backend=b, **kw), [logits], cots)
        ref, g_ref = _outputs_and_grads(lambda x: sequence_logprobs_ref(x, targets, **kw),
                                        [logits.float()], cots)
        low, g_low = _outputs_and_grads(plain, [logits], cots)
        for name, o, r, lo in zip(["logp", "entropy"], got, ref, low):
            _assert_close(f"{backend} {name}", o, r, lo)
        _assert_close(f"{backend} grad_logits", g_got[0], g_ref[0], g_low[0])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_linear_logprobs_gpu(dtype):
    gen = torch.Generator().manual_seed(12)
    N, H, V = 2047, 512, 32003
    hidden = torch.randn(N, H, generator=gen).to(dtype).cuda()
    weight = (torch.randn(V, H, generator=gen) * (2 / H**0.5)).to(dtype).cuda()
    bias = torch.randn(V, generator=gen).to(dtype).cuda()
    targets = _targets((N,), V, gen, "some").cuda()
    cots = [torch.randn(N, generator=gen).cuda() for _ in range(2)]
    kw = {"temperature": 0.9, "ignore_index": IGN, "return_entropy": True}

    def plain(h, w, b):
        logp_all = torch.log_softmax((h @ w.t() + b) / 0.9, dim=-1)  # (N, V) in dtype
        valid = targets != IGN
        lp = logp_all.gather(-1, targets.clamp(min=0)[:, None])[:, 0]  # (N,)
        ent = -(logp_all.exp() * logp_all).sum(-1)
        return torch.where(valid, lp, 0), torch.where(valid, ent, 0)

    ref, g_ref = _outputs_and_grads(
        lambda h, w, b: linear_logprobs_ref(h, w, targets, bias=b, **kw),
        [hidden.float(), weight.float(), bias.float()], cots)
    low, g_low = _outputs_and_grads(plain, [hidden, weight, bias], cots)
    for backend in BACKENDS:
        got, g_got = _outputs_and_grads(
            lambda h, w, b, k=backend: linear_logprobs(h, w, targets, bias=b, backend=k, **kw),
            [hidden, weight, bias], cots)
        for name, o, r, lo in zip(["logp", "entropy"], got, ref, low):
            _assert_close(f"{backend} {name}", o, r, lo)
        for name, o, r, lo in zip(["grad_hidden", "grad_weight", "grad_bias"], g_got, g_ref, g_low):
            _assert_close(f"{backend} {name}", o, r, lo)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("tf", TRANSFORMS, ids=lambda t: t[0])
def test_softcap_scale_gpu(tf, dtype):
    """Compiled Triton (and the torch path on CUDA) with soft-capping / scaling, both ops."""
    seq = ("tf_gpu", (4, 300, 32003), 0.7, True, "row", "slice")
    lin = ("tf_gpu", (3, 257, 256), 32003, True, 0.7, True, "row", None, None)
    for backend in BACKENDS:
        _check_sequence(seq, dtype, backend, scale=tf[1], cap=tf[2], device="cuda")
        _check_linear(lin, dtype, backend, scale=tf[1], cap=tf[2], device="cuda")
