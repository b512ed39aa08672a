"""kernels.ratio: ppo_clip_loss (torch and interpreted Triton) vs the fp32 reference and hand-worked
numbers, forward and gradient."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import ppo_clip_loss
from kernels.reference import ppo_clip_loss_ref

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
