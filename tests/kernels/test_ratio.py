"""kernels.ratio: ppo_clip_loss (torch and interpreted Triton) vs the fp32 reference and hand-worked
numbers, forward and gradient; A-LoL clamped weights; P3O V1/V2 with the ALGORITHMS.md 6 check."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import ppo_clip_loss
from kernels.ratio import clamped_importance_weight, p3o_clip_objective
from kernels.reference import (
    clamped_importance_weight_ref,
    p3o_clip_objective_ref,
    ppo_clip_loss_ref,
)

BACKENDS = ["torch", "triton"]
REDUCTIONS = ["token_mean", "seq_mean", "sum"]
STAT_KEYS = ["clip_frac", "approx_kl", "ratio_mean", "ratio_min", "ratio_max"]


def _batch(B: int, T: int, seed: int, dtype=torch.float32):
    """Log-probs (dtype, requires grad), old log-probs, advantages, mask with left/right padding
    and a fully masked row, and random macro ids; ratios spread enough to clip both sides."""
    g = torch.Generator().manual_seed(seed)
    lp = (-torch.rand(B, T, generator=g) * 3).to(dtype)
    old = (lp.float() + 0.3 * torch.randn(B, T, generator=g)).to(dtype)
    adv = torch.randn(B, T, generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        n = int(torch.randint(1, T + 1, (1,), generator=g))
        if b % 2:
            mask[b, T - n:] = True  # left padding
        else:
            mask[b, :n] = True  # right padding
    if B > 1:
        mask[1] = False
    ids = (torch.rand(B, T, generator=g) < 0.4).long().cumsum(dim=1)
    return lp.requires_grad_(True), old, adv, mask, ids


def _loss_and_grad(fn, lp, *args, **kw):
    loss, stats = fn(lp, *args, **kw)
    (grad,) = torch.autograd.grad(loss, lp)
    return loss, grad, stats


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (3, 129)])
@pytest.mark.parametrize("ratio_level", ["token", "segment"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ppo_matches_reference(backend, shape, ratio_level, reduction):
    lp, old, adv, mask, ids = _batch(*shape, seed=shape[1])
    kw = dict(clip_low=0.2, clip_high=0.28, ratio_level=ratio_level, segment_ids=ids,
              reduction=reduction)
    loss, grad, stats = _loss_and_grad(ppo_clip_loss, lp, old, adv, mask, backend=backend, **kw)
    loss_ref, grad_ref, stats_ref = _loss_and_grad(ppo_clip_loss_ref, lp, old, adv, mask, **kw)
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(grad, grad_ref)
    assert not grad[~mask].any()
    for key in STAT_KEYS:
        torch.testing.assert_close(stats[key], stats_ref[key], msg=key)
        assert not stats[key].requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ratio_level", ["token", "segment"])
def test_ppo_dtypes(backend, dtype, ratio_level):
    """Low-precision log-probs are read in fp32: loss as exact as fp32, gradient rounded once."""
    lp, old, adv, mask, ids = _batch(3, 47, seed=3, dtype=dtype)
    kw = dict(ratio_level=ratio_level, segment_ids=ids)
    loss, grad, _ = _loss_and_grad(ppo_clip_loss, lp, old, adv, mask, backend=backend, **kw)
    loss_ref, grad_ref, _ = _loss_and_grad(ppo_clip_loss_ref, lp, old, adv, mask, **kw)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(grad, grad_ref)  # both fp32 math, one rounding to dtype


# Hand-worked 2 x 3 example, clip 0.2, the last token of row 1 is padding:
#   ratios rho = [[1.5, 0.5, 1.0], [1.1, 0.7, -]], advantages A = [[1, -2, 0.5], [-1, 3, -]]
#   (0,0) max(-1.5, -1.2) = -1.2  clipped   (0,1) max(1.0, 1.6) = 1.6  clipped
#   (0,2) -0.5                            (1,0) 1.1 (inside the range)
#   (1,1) max(-2.1, -2.4) = -2.1 unclipped
#   sum = -1.1; token_mean = -1.1 / 5 = -0.22; seq_mean = ((-0.1 / 3) + (-1.0 / 2)) / 2
#   clip_frac = 2/5; ratio mean 4.8/5, min 0.5, max 1.5; k3 = sum(rho - 1 - log rho) / 5
#   d token_mean / d logprob = -A * rho / 5 where unclipped: [[0, 0, -0.1], [0.22, -0.42, 0]]
#   segment level, row 0 macros {0, 1}, {2}: rho = 1.5 * 0.5 = 0.75 for both tokens:
#   (0,0) max(-0.75, -0.8) = -0.75 unclipped; (0,1) max(1.5, 1.6) = 1.6 clipped; the macro's
#   gradient -0.75 / 5 = -0.15 goes to both of its tokens; total -0.65, token_mean -0.13
RHO = [[1.5, 0.5, 1.0], [1.1, 0.7, 1.0]]


def _worked():
    lp = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]], requires_grad=True)
    old = lp.detach() - torch.tensor(RHO).log()
    adv = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 3.0, 9.9]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return lp, old, adv, mask


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("reduction", "want"),
                         [("token_mean", -0.22), ("seq_mean", (-0.1 / 3 - 0.5) / 2), ("sum", -1.1)])
def test_ppo_hand_worked(backend, reduction, want):
    lp, old, adv, mask = _worked()
    loss, grad, stats = _loss_and_grad(ppo_clip_loss, lp, old, adv, mask, reduction=reduction,
                                       backend=backend)
    torch.testing.assert_close(loss, torch.tensor(want))
    if reduction == "token_mean":
        torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, -0.1], [0.22, -0.42, 0.0]]))
    k3 = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.0, 1.1, 0.7)) / 5
    want_stats = dict(clip_frac=0.4, approx_kl=k3, ratio_mean=0.96, ratio_min=0.5, ratio_max=1.5)
    for key, value in want_stats.items():
        torch.testing.assert_close(stats[key], torch.tensor(value), msg=key)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ppo_hand_worked_segment(backend):
    lp, old, adv, mask = _worked()
    ids = torch.tensor([[0, 0, 1], [0, 1, 1]])
    loss, grad, stats = _loss_and_grad(ppo_clip_loss, lp, old, adv, mask, ratio_level="segment",
                                       segment_ids=ids, backend=backend)
    torch.testing.assert_close(loss, torch.tensor(-0.13))
    torch.testing.assert_close(grad, torch.tensor([[-0.15, -0.15, -0.1], [0.22, -0.42, 0.0]]))
    torch.testing.assert_close(stats["clip_frac"], torch.tensor(0.2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ppo_one_token_macros_equal_token_level(backend):
    """MA-PPO with n = 1 is PPO: one token per macro gives the same loss and gradient."""
    lp, old, adv, mask, _ = _batch(3, 17, seed=1)
    ids = torch.arange(17).expand(3, 17)
    a = _loss_and_grad(ppo_clip_loss, lp, old, adv, mask, backend=backend)
    b = _loss_and_grad(ppo_clip_loss, lp, old, adv, mask, ratio_level="segment",
                       segment_ids=ids, backend=backend)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ppo_all_masked_is_zero(backend, reduction):
    lp, old, adv, mask, ids = _batch(2, 9, seed=2)
    loss, grad, stats = _loss_and_grad(ppo_clip_loss, lp, old, adv, torch.zeros_like(mask),
                                       reduction=reduction, backend=backend)
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    assert all(stats[k].item() == 0.0 for k in STAT_KEYS)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ppo_grad_only_for_logprobs_and_scaled(backend):
    lp, old, adv, mask, _ = _batch(3, 17, seed=4)
    old.requires_grad_(True)
    adv.requires_grad_(True)
    loss, _ = ppo_clip_loss(lp, old, adv, mask, backend=backend)
    (3.0 * loss).backward()
    assert old.grad is None and adv.grad is None
    _, grad_ref, _ = _loss_and_grad(ppo_clip_loss_ref, lp.detach().requires_grad_(True),
                                    old.detach(), adv.detach(), mask)
    torch.testing.assert_close(lp.grad, 3.0 * grad_ref)


def test_ppo_bad_args():
    lp, old, adv, mask, _ = _batch(2, 5, seed=0)
    with pytest.raises(ValueError, match="segment_ids"):
        ppo_clip_loss(lp, old, adv, mask, ratio_level="segment")
    with pytest.raises(ValueError, match="reduction"):
        ppo_clip_loss(lp, old, adv, mask, reduction="mean")
    with pytest.raises(ValueError, match="shape"):
        ppo_clip_loss(lp, old[:, :2], adv, mask)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ppo_compiled_triton_on_cuda(dtype):
    lp, old, adv, mask, ids = _batch(3, 1500, seed=9, dtype=dtype)
    lp = lp.detach().cuda().requires_grad_(True)
    args = [x.cuda() for x in (old, adv, mask)]
    for level in ("token", "segment"):
        kw = dict(ratio_level=level, segment_ids=ids.cuda())
        loss, grad, _ = _loss_and_grad(ppo_clip_loss, lp, *args, backend="triton", **kw)
        loss_ref, grad_ref, _ = _loss_and_grad(ppo_clip_loss_ref, lp, *args, **kw)
        torch.testing.assert_close(loss, loss_ref)
        torch.testing.assert_close(grad, grad_ref)


# --- A-LoL clamped importance weights ----------------------------------------------------------


def test_clamped_importance_weight_alol_worked_check():
    """ALGORITHMS.md 2: l_theta - l_ref = [0.2, -0.1] sequence-wise (row 1 has a pad token)."""
    lp = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, 5.0]])
    ref = torch.tensor([[-1.2, -0.4, -2.5], [-0.2, -1.0, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    seq = clamped_importance_weight(lp, ref, mask)
    torch.testing.assert_close(seq, torch.tensor([math.exp(0.6), math.exp(-0.3)]))
    tok = clamped_importance_weight(lp, ref, mask, level="token", clip_eps=0.1)
    want = torch.tensor([[1.1, math.exp(-0.1), 1.1], [math.exp(-0.1), 0.9, 0.0]])
    torch.testing.assert_close(tok, want)


@pytest.mark.parametrize("level", ["sequence", "token"])
def test_clamped_importance_weight_matches_reference(level):
    lp, old, _, mask, _ = _batch(3, 17, seed=6)
    w = clamped_importance_weight(lp, old, mask, clip_eps=0.5, level=level)
    assert not w.requires_grad
    torch.testing.assert_close(w, clamped_importance_weight_ref(lp, old, mask, clip_eps=0.5,
                                                                level=level))
    assert w.min() >= 0.0 and w.max() <= 1.5


# --- P3O ---------------------------------------------------------------------------------------
# ALGORITHMS.md 6: r1 = 1.0, r2 = 0.2, beta = 0.05; theta/old/ref: y1 -20.0/-20.3/-21.0,
# y2 -25.0/-24.8/-25.5.  r~1 = 1 - 0.05 * 1.0 = 0.95, r~2 = 0.2 - 0.05 * 0.5 = 0.175,
# Delta = 0.775; rho1 = e^0.3, rho2 = e^-0.2, rho1 rho2 = e^0.1 (all inside [1/10, 10]).
# V1, eps 0.2: term 1 = max(-D rho2 rho1, -D rho2 * 1.2) = -0.93 e^-0.2 (clipped, no grad);
#   term 2 = max(D rho1 rho2, D rho1 clip(e^-0.2 = 0.8187)) = 0.775 e^0.1 (unclipped)
#   L = (0.775 e^0.1 - 0.93 e^-0.2) / 2; dL/dl1 = 0; dL/dl2 = 0.775 e^0.1 / 2
# V1, eps 0.5: nothing clips: L = 0; dL/dl1 = -0.775 e^0.1 / 2 = -dL/dl2
# V2, eps 0.2: u = 5.0, u_old = 4.5, w = e^0.1: max(-D w 5, -D w 4.7) = -0.775 e^0.1 * 4.7
#   (clipped: zero gradient)
# V2, eps 1.0: clip(5, 3.5, 5.5) = 5: L = -0.775 e^0.1 * 5; dL/dl1 = -0.775 e^0.1 = -dL/dl2
DW = 0.775 * math.exp(0.1)
P3O_WORKED = [
    ("v1", 0.2, (DW - 0.93 * math.exp(-0.2)) / 2, 0.0, DW / 2),
    ("v1", 0.5, 0.0, -DW / 2, DW / 2),
    ("v2", 0.2, -DW * 4.7, 0.0, 0.0),
    ("v2", 1.0, -DW * 5.0, -DW, DW),
]


def _p3o_inputs(dtype: torch.dtype = torch.float32):
    l1 = torch.tensor([-20.0], dtype=dtype, requires_grad=True)
    l2 = torch.tensor([-25.0], dtype=dtype, requires_grad=True)
    rest = dict(old1=[-20.3], ref1=[-21.0], old2=[-24.8], ref2=[-25.5], r1=[1.0], r2=[0.2])
    t = {k: torch.tensor(v, dtype=dtype) for k, v in rest.items()}
    return l1, l2, (l1, t["old1"], t["ref1"], l2, t["old2"], t["ref2"], t["r1"], t["r2"])


@pytest.mark.parametrize(("variant", "eps", "want", "g1", "g2"), P3O_WORKED)
def test_p3o_worked_check(variant, eps, want, g1, g2):
    l1, l2, args = _p3o_inputs()
    loss, stats = p3o_clip_objective(*args, variant=variant, clip_eps=eps, kl_beta=0.05)
    torch.testing.assert_close(stats["delta_mean"], torch.tensor(0.775))
    grads = torch.autograd.grad(loss, (l1, l2))
    torch.testing.assert_close(loss, torch.tensor(want))
    torch.testing.assert_close(torch.cat(grads), torch.tensor([g1, g2]))


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_p3o_matches_reference_and_shift_invariance(variant):
    g = torch.Generator().manual_seed(0)
    B = 6
    l1 = (-20 + torch.randn(B, generator=g)).requires_grad_(True)
    l2 = (-22 + torch.randn(B, generator=g)).requires_grad_(True)
    o1 = l1.detach() + 0.2 * torch.randn(B, generator=g)
    o2 = l2.detach() + 0.2 * torch.randn(B, generator=g)
    ref1, ref2 = l1.detach() - 0.5, l2.detach() + 0.3
    r1, r2 = torch.randn(B, generator=g), torch.randn(B, generator=g)
    args = (l1, o1, ref1, l2, o2, ref2)
    loss, _ = p3o_clip_objective(*args, r1, r2, variant=variant)
    loss_ref = p3o_clip_objective_ref(*args, r1, r2, variant=variant)
    grads = torch.autograd.grad(loss, (l1, l2))
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(grads, torch.autograd.grad(loss_ref, (l1, l2)))
    shifted, _ = p3o_clip_objective(*args, r1 + 3.0, r2 + 3.0, variant=variant)
    torch.testing.assert_close(torch.autograd.grad(shifted, (l1, l2)), grads)
