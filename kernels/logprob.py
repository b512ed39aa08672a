"""Token log-probs without an fp32 copy of the logits, and from hidden states without the logits.

``sequence_logprobs``: fused log-softmax + gather (+ entropy) over (B, T, V) logits.
``linear_logprobs``: lm_head matmul + log-prob chunked over tokens, so no (N, V) tensor exists.
Both read the distribution ``softmax(softcap(logit_scale * logits) / temperature)`` with
``softcap(y) = c * tanh(y / c)`` (Gemma 2/3 style), each transform optional, applied on the fly.
Backends: a row-chunked torch path (runs anywhere) and Triton kernels (online logsumexp, one
program per row; see the kernel section). Backward recomputes from the saved per-row logsumexp.
"""

from __future__ import annotations

import math
import os

import torch

from kernels._backend import resolve_backend

# Rows per chunk of the torch path: bounds its fp32 temporaries to ~chunk * V * 4 bytes each.
_TORCH_CHUNK_ELEMS = 1 << 22
# Floor for log p where logits are -inf: exp gives 0 either way, and products stay finite.
_LOGP_FLOOR = -1e30


# --- torch row ops: one chunk of rows (R, V) -----------------------------------------------------


def _transformed_fp32(
    x: torch.Tensor, tf: tuple[float | None, float | None, float], want_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor | float | None]:
    """z = softcap(scale * x) / temperature in fp32, and with ``want_grad`` dz/dx.

    x (R, V); tf = (logit_scale or None, softcap or None, temperature). z is x itself
    (read-only!) when x is fp32 and there is nothing to apply. dz/dx is a float without softcap,
    else an (R, V) fp32 tensor ``scale * (1 - tanh^2) / temperature``; None without ``want_grad``.
    """
    scale, cap, temperature = tf
    z = x.float()  # (R, V) fp32: a copy only when x is bf16/fp16
    if scale is not None:
        z = z * scale
    dz = (1.0 if scale is None else scale) / temperature if want_grad else None
    if cap is not None:
        t = torch.tanh(z / cap)  # (R, V)
        if want_grad:
            dz = (1.0 - t * t).mul_(dz)
        z = t.mul_(cap)
    if temperature != 1.0:
        z = z / temperature if z is x else z.div_(temperature)
    return z, dz


def _torch_rows_fwd(
    x: torch.Tensor, tgt: torch.Tensor, tf: tuple, ignore_index: int, want_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Log-prob, logsumexp and entropy of one chunk. x (R, V) any dtype/strides; tgt (R,);
    tf = (logit_scale, softcap, temperature) as in ``_transformed_fp32``.

    Returns fp32 (R,) tensors: logp (0 where ignored), lse, entropy (0 where ignored) or None.
    Uses log_softmax (one fused pass; torch.logsumexp is several times slower on CPU) and reads
    lse = max - log_softmax[argmax] off it.
    """
    z, _ = _transformed_fp32(x, tf)  # (R, V)
    ls = torch.log_softmax(z, dim=-1)  # (R, V) log p
    valid = tgt != ignore_index
    safe = torch.where(valid, tgt, 0).long()[:, None]  # (R, 1)
    logp = torch.where(valid, ls.gather(1, safe).squeeze(1), 0.0)
    zmax, imax = z.max(dim=-1)  # (R,), (R,)
    lse = zmax - ls.gather(1, imax[:, None]).squeeze(1)
    ent = None
    if want_entropy:
        ls.clamp_(min=_LOGP_FLOOR)  # -inf logits: p = 0 and p log p = 0, not NaN
        ent = torch.where(valid, -(ls.exp().mul_(ls)).sum(-1), 0.0)
    return logp, lse, ent


def _torch_rows_bwd(
    x: torch.Tensor,
    tgt: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor | None,
    g_lp: torch.Tensor,
    g_ent: torch.Tensor | None,
    tf: tuple,
    ignore_index: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """d(loss)/d(x) for one chunk into ``out`` (R, V) (x's dtype; may alias x) or a new tensor.

    x (R, V); tgt, lse, ent, g_lp, g_ent (R,). With z = softcap(scale x) / temperature and
    p = softmax(z): dlogp/dz = onehot - p;  dH/dz = -p (log p + H); then times dz/dx.
    For fp32 x the work happens in ``out``.
    """
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    valid = tgt != ignore_index
    g = torch.where(valid, g_lp.float(), 0.0)[:, None]  # (R, 1)
    z, dz = _transformed_fp32(x, tf, want_grad=True)  # before ``out`` (maybe x) is written
    buf = out if out.dtype == torch.float32 else torch.empty(x.shape, device=x.device)  # (R, V)
    torch.sub(z, lse[:, None], out=buf)  # log p
    del z
    if g_ent is not None and ent is not None:
        g_h = torch.where(valid, g_ent.float(), 0.0)[:, None]  # (R, 1)
        coef = buf.clamp(min=_LOGP_FLOOR).add_(ent[:, None]).mul_(g_h).add_(g)  # g+g_H(logp+H)
        buf.exp_().mul_(coef).neg_()
    else:
        buf.exp_().mul_(-g)
    safe = torch.where(valid, tgt, 0).long()[:, None]  # (R, 1)
    buf.scatter_add_(1, safe, g)
    if isinstance(dz, torch.Tensor) or dz != 1.0:
        buf.mul_(dz)
    if buf is not out:
        out.copy_(buf)
    return out


def _row_pieces(x: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """Split (B, T, V) into 2-D views (row offset, (R, V)) covering its B*T rows in order."""
    B, T, V = x.shape
    try:
        return [(0, x.view(B * T, V))]  # (B*T, V)
    except RuntimeError:  # e.g. logits[:, :-1]: rows are not evenly strided
        return [(b * T, x[b]) for b in range(B)]  # each (T, V)


def _chunk_rows(V: int, chunk_rows: int | None) -> int:
    return chunk_rows if chunk_rows else max(1, _TORCH_CHUNK_ELEMS // max(V, 1))


def _torch_seq_fwd(logits, targets, tf, ignore_index, want_entropy, chunk_rows):
    """Chunked forward over (B, T, V) logits; targets (B*T,). Returns logp, lse, ent (B*T,) fp32."""
    N = targets.numel()
    logp = logits.new_empty(N, dtype=torch.float32)
    lse = torch.empty_like(logp)
    ent = torch.empty_like(logp) if want_entropy else None
    step = _chunk_rows(logits.shape[-1], chunk_rows)
    for r0, rows in _row_pieces(logits):
        for i in range(0, rows.shape[0], step):
            s = slice(r0 + i, r0 + min(i + step, rows.shape[0]))
            lp, l, h = _torch_rows_fwd(rows[i : i + step], targets[s], tf, ignore_index,
                                       want_entropy)
            logp[s], lse[s] = lp, l
            if ent is not None:
                ent[s] = h
    return logp, lse, ent


def _torch_seq_bwd(logits, targets, lse, ent, g_lp, g_ent, tf, ignore_index, chunk_rows):
    """Chunked backward: grad (B, T, V) contiguous in logits' dtype; other args (B*T,)."""
    B, T, V = logits.shape
    grad = torch.empty((B, T, V), dtype=logits.dtype, device=logits.device)
    flat = grad.view(B * T, V)  # (B*T, V)
    step = _chunk_rows(V, chunk_rows)
    for r0, rows in _row_pieces(logits):
        for i in range(0, rows.shape[0], step):
            s = slice(r0 + i, r0 + min(i + step, rows.shape[0]))
            _torch_rows_bwd(
                rows[i : i + step], targets[s], lse[s], None if ent is None else ent[s], g_lp[s],
                None if g_ent is None else g_ent[s], tf, ignore_index, out=flat[s],
            )
    return grad


# --- linear (lm_head) chunking -----------------------------------------------------------------


def _spans(N: int, chunk: int) -> list[slice]:
    return [slice(i, min(i + chunk, N)) for i in range(0, N, chunk)]


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Logits of one chunk in the input dtype: h (c, H), weight (V, H), bias (V,) -> (c, V)."""
    return h @ weight.t() if bias is None else torch.addmm(bias, h, weight.t())  # (c, V)


def _default_chunk(N: int, V: int, H: int) -> int:
    """Tokens per chunk so that a (chunk, V) buffer is about the size of hidden (N, H).

    Same heuristic as Liger-Kernel's fused linear cross-entropy, floored at 256 rows so that the
    grad_weight matmul (inner dimension = chunk) stays efficient.
    """
    ratio = -(-V // max(H, 1))  # ceil(V / H)
    target = max(1, -(-N // ratio))
    return min(N, max(256, 1 << (target - 1).bit_length()))


def _accumulate_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (fp32) += a @ b without rounding the partial product to a's low-precision dtype.

    fp32: in-place addmm. bf16/fp16: on CUDA a matmul with fp32 output (torch >= 2.8
    ``out_dtype``), elsewhere an fp32 upcast of this chunk.
    """
    if a.dtype == torch.float32:
        acc.addmm_(a, b)
        return
    if a.is_cuda:
        try:
            acc += torch.mm(a, b, out_dtype=torch.float32)
            return
        except (TypeError, RuntimeError, NotImplementedError):  # older torch / unsupported
            pass
    acc.addmm_(a.float(), b.float())


def _rows_fwd(backend, z, tgt, tf, ignore_index, want_entropy):
    """Dispatch one (R, V) chunk's forward to the torch or Triton row op."""
    if backend == "triton":
        return _triton_seq_fwd(z.unsqueeze(0), tgt, tf, ignore_index, want_entropy)
    return _torch_rows_fwd(z, tgt, tf, ignore_index, want_entropy)


def _rows_bwd(backend, z, tgt, lse, ent, g_lp, g_ent, tf, ignore_index):
    """Dispatch one (R, V) chunk's backward; returns grad (R, V) in z's dtype."""
    if backend == "triton":
        return _triton_seq_bwd(z.unsqueeze(0), tgt, lse, ent, g_lp, g_ent, tf,
                               ignore_index, out=z.unsqueeze(0)).squeeze(0)
    return _torch_rows_bwd(z, tgt, lse, ent, g_lp, g_ent, tf, ignore_index, out=z)


# --- autograd ----------------------------------------------------------------------------------


class SequenceLogprobsFunction(torch.autograd.Function):
    """Autograd for ``sequence_logprobs`` on (B, T, V) logits; saves per-row lse (+ entropy).
    ``tf`` = (logit_scale or None, softcap or None, temperature)."""

    @staticmethod
    def forward(ctx, logits, targets, tf, ignore_index, return_entropy, backend, chunk_rows):
        tflat = targets.reshape(-1)  # (B*T,)
        if backend == "triton":
            logp, lse, ent = _triton_seq_fwd(logits, tflat, tf, ignore_index, return_entropy)
        else:
            logp, lse, ent = _torch_seq_fwd(logits, tflat, tf, ignore_index, return_entropy,
                                            chunk_rows)
        ctx.save_for_backward(logits, tflat, lse, ent)
        ctx.cfg = (tf, ignore_index, backend, chunk_rows)
        B, T = targets.shape
        if return_entropy:
            return logp.view(B, T), ent.view(B, T)
        return logp.view(B, T)

    @staticmethod
    def backward(ctx, g_lp, g_ent=None):
        logits, tflat, lse, ent = ctx.saved_tensors
        tf, ignore_index, backend, chunk_rows = ctx.cfg
        if not ctx.needs_input_grad[0]:
            return (None,) * 7
        g_lp = g_lp.reshape(-1).float().contiguous()  # (B*T,)
        if g_ent is not None:
            g_ent = g_ent.reshape(-1).float().contiguous()  # (B*T,)
        if backend == "triton":
            grad = _triton_seq_bwd(logits, tflat, lse, ent, g_lp, g_ent, tf, ignore_index)
        else:
            grad = _torch_seq_bwd(logits, tflat, lse, ent, g_lp, g_ent, tf, ignore_index,
                                  chunk_rows)
        return grad, None, None, None, None, None, None


class LinearLogprobsFunction(torch.autograd.Function):
    """Autograd for ``linear_logprobs``: chunks of tokens, logits recomputed in backward.

    Saves hidden, weight, bias and the per-token lse (+ entropy); peak extra memory is a few
    (chunk, V) buffers. grad_weight / grad_bias accumulate in fp32 across chunks. Under CUDA
    autocast (bf16-mixed training) backward runs in the forward's autocast state, so the logits it
    recomputes are rounded as those the saved lse came from.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, weight, bias, targets, tf, ignore_index, return_entropy, backend,
                chunk_size):
        N = hidden.shape[0]
        logp = hidden.new_empty(N, dtype=torch.float32)
        lse = torch.empty_like(logp)
        ent = torch.empty_like(logp) if return_entropy else None
        for s in _spans(N, chunk_size):
            z = _chunk_logits(hidden[s], weight, bias)  # (c, V)
            lp, l, h = _rows_fwd(backend, z, targets[s], tf, ignore_index, return_entropy)
            logp[s], lse[s] = lp, l
            if ent is not None:
                ent[s] = h
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.cfg = (tf, ignore_index, backend, chunk_size)
        return (logp, ent) if return_entropy else logp

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g_lp, g_ent=None):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        tf, ignore_index, backend, chunk_size = ctx.cfg
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g_lp = g_lp.float().contiguous()  # (N,)
        g_ent = None if g_ent is None else g_ent.float().contiguous()  # (N,)
        grad_h = torch.empty_like(hidden) if need_h else None
        f32 = {"dtype": torch.float32, "device": weight.device}
        grad_w = torch.zeros(weight.shape, **f32) if need_w else None  # (V, H)
        grad_b = torch.zeros(weight.shape[0], **f32) if need_b else None  # (V,)
        for s in _spans(hidden.shape[0], chunk_size):
            z = _chunk_logits(hidden[s], weight, bias)  # (c, V)
            gz = _rows_bwd(backend, z, targets[s], lse[s], None if ent is None else ent[s],
                           g_lp[s], None if g_ent is None else g_ent[s], tf,
                           ignore_index)  # (c, V) in z's dtype
            if grad_h is not None:
                grad_h[s] = gz @ weight  # (c, H)
            if grad_w is not None:
                _accumulate_mm(grad_w, gz.t(), hidden[s])  # (V, c) @ (c, H)
            if grad_b is not None:
                grad_b += gz.float().sum(0)  # (V,)
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None


# --- functional API ----------------------------------------------------------------------------


def _check_common(
    targets: torch.Tensor, temperature: float, logit_scale: float | None, softcap: float | None
) -> tuple[float | None, float | None, float]:
    """Validate the shared arguments; return the transform (logit_scale, softcap, temperature)."""
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor, got {targets.dtype}")
    for name, value in (("temperature", temperature), ("logit_scale", logit_scale),
                        ("softcap", softcap)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return (
        None if logit_scale is None or logit_scale == 1.0 else float(logit_scale),
        None if softcap is None else float(softcap),
        float(temperature),
    )


def sequence_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    logit_scale: float | None = None,
    softcap: float | None = None,
    ignore_index: int = -100,
    return_entropy: bool = False,
    backend: str = "auto",
    chunk_rows: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target token under ``softmax(softcap(logit_scale * logits) / temperature)``.

    Args:
        logits: (B, T, V) or (N, V), fp32/bf16/fp16, any strides (e.g. ``logits[:, :-1]``).
        targets: (B, T) or (N,) integer token ids; ``ignore_index`` marks positions to skip.
        temperature: divides the logits before the softmax (> 0).
        logit_scale: multiplies the logits first (> 0; Cohere ``logit_scale``, Granite
            ``1 / logits_scaling``); None = 1.
        softcap: ``c`` of ``c * tanh(y / c)``, applied after the scale and before the temperature
            (Gemma 2/3 ``final_logit_softcapping``); None = no capping.
        ignore_index: target id whose log-prob, entropy and gradient are 0.
        return_entropy: also return the tempered entropy ``-sum_v p log p`` per position.
        backend: "auto" | "triton" | "torch" (see ``kernels._backend.resolve_backend``).
        chunk_rows: rows per chunk of the torch backend (default: ~4M logits per chunk).

    Returns:
        logp (B, T) fp32 [, entropy (B, T) fp32]; shaped like ``targets``.
    """
    tf = _check_common(targets, temperature, logit_scale, softcap)
    if logits.dim() not in (2, 3) or targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"expected logits (B, T, V) or (N, V) and targets of its leading shape, got "
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}"
        )
    squeeze = logits.dim() == 2
    if squeeze:
        logits, targets = logits.unsqueeze(0), targets.unsqueeze(0)  # (1, N, V), (1, N)
    impl = resolve_backend(backend, logits)
    out = SequenceLogprobsFunction.apply(
        logits, targets, tf, int(ignore_index), bool(return_entropy), impl, chunk_rows
    )
    if squeeze:
        return tuple(o.squeeze(0) for o in out) if return_entropy else out.squeeze(0)
    return out


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    logit_scale: float | None = None,
    softcap: float | None = None,
    ignore_index: int = -100,
    return_entropy: bool = False,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of ``targets`` under ``softmax(softcap(logit_scale * (hidden @ weight.T + bias))
    / temperature)``.

    The (N, V) logits are never materialised: tokens are processed ``chunk_size`` at a time and
    backward recomputes each chunk's logits.

    Args:
        hidden: (B, T, H) or (N, H) final hidden states (fp32/bf16/fp16).
        weight: (V, H) lm_head weight, same dtype as ``hidden``.
        targets: (B, T) or (N,) integer token ids; ``ignore_index`` marks positions to skip.
        bias: optional (V,) lm_head bias.
        temperature, logit_scale, softcap, ignore_index, return_entropy, backend: as in
            ``sequence_logprobs``.
        chunk_size: tokens per chunk (default: a power of two making (chunk, V) ~ (N, H)).

    Returns:
        logp (B, T) fp32 [, entropy (B, T) fp32]; shaped like ``targets``.
    """
    tf = _check_common(targets, temperature, logit_scale, softcap)
    H = hidden.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != H or targets.shape != hidden.shape[:-1]:
        raise ValueError(
            f"expected hidden (B, T, H), weight (V, H), targets (B, T); got hidden "
            f"{tuple(hidden.shape)}, weight {tuple(weight.shape)}, targets {tuple(targets.shape)}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be (V,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden and weight dtypes differ: {hidden.dtype} vs {weight.dtype}")
    h2 = hidden.reshape(-1, H)  # (N, H)
    t1 = targets.reshape(-1)  # (N,)
    chunk = chunk_size or _default_chunk(h2.shape[0], weight.shape[0], H)
    impl = resolve_backend(backend, hidden, weight)
    out = LinearLogprobsFunction.apply(
        h2, weight, bias, t1, tf, int(ignore_index), bool(return_entropy), impl, max(1, chunk)
    )
    if return_entropy:
        return out[0].view(targets.shape), out[1].view(targets.shape)
    return out.view(targets.shape)


# --- Triton kernels ----------------------------------------------------------------------------
#
# Forward: one program per (b, t) row walks the vocabulary in BLOCK_V tiles keeping an online
# max m, sum s = sum exp(z - m) and, for the entropy, a = sum exp(z - m) (z - m), all fp32
# (rescaled by exp(m_old - m_new) when the max grows), so logits are read once:
# lse = m + log s, H = log s - a / s. The target logit is one extra scalar load.
# Backward reads the row again and writes (g * (onehot - p) - g_H p (log p + H)) * dz/dx straight
# in the logits' dtype. z = softcap(scale * x) / temperature is formed per tile (``_transform``);
# softcap is a static flag, its value and the scale runtime scalars. Triton has no tanh that also
# runs in the interpreter, so ``_tanh`` builds it from exp. Offsets are int64; any strides.
# Limits: a target outside [0, V) that is not ignore_index gives NaN (no device assert); a row
# that is -inf everywhere gives NaN, as log_softmax does.

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch backend only
    triton = None

if triton is not None:

    @triton.jit
    def _tanh(a):
        """fp32 tanh from exp: odd Taylor series to a^15 for |a| < 0.5 (error < 5e-9), else
        (1 - e) / (1 + e) with e = exp(-2|a|) (no cancellation there; +-1 at +-inf)."""
        a2 = a * a
        p = -1.4558344e-3
        p = p * a2 + 3.5921280e-3
        p = p * a2 - 8.8632355e-3
        p = p * a2 + 2.1869489e-2
        p = p * a2 - 5.3968254e-2
        p = p * a2 + 1.3333334e-1
        p = p * a2 - 3.3333334e-1
        small = a * (p * a2 + 1.0)
        e = tl.exp(-2.0 * tl.abs(a))
        big = (1.0 - e) / (1.0 + e)
        return tl.where(tl.abs(a) < 0.5, small, tl.where(a < 0, -big, big))

    @triton.jit
    def _transform(x, scale, softcap, temperature, SOFTCAP: tl.constexpr):
        """(z, dz/dx) for raw logits x: z = softcap(scale * x) / temperature, in fp32."""
        y = x.to(tl.float32) * scale
        if SOFTCAP:
            t = _tanh(y / softcap)
            y = t * softcap
            dy = (1.0 - t * t) * scale
        else:
            dy = scale
        return y / temperature, dy / temperature

    @triton.jit
    def _logprob_fwd_kernel(
        logits_ptr, targets_ptr, logp_ptr, lse_ptr, ent_ptr,
        T, V,
        stride_lb, stride_lt, stride_lv,
        scale, softcap, temperature, ignore_index,
        BLOCK_V: tl.constexpr, WITH_ENTROPY: tl.constexpr, SOFTCAP: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + (row // T) * stride_lb + (row % T) * stride_lt
        m = tl.full([], float("-inf"), tl.float32)
        s = tl.zeros([], tl.float32)
        a = tl.zeros([], tl.float32)
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
            x = tl.load(base + cols * stride_lv, mask=cols < V, other=0.0)
            z, _ = _transform(x, scale, softcap, temperature, SOFTCAP)
            z = tl.where(cols < V, z, float("-inf"))  # padding (softcap would make it finite)
            m_new = tl.maximum(m, tl.max(z, 0))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # avoid -inf - -inf
            alpha = tl.exp(m - m_ref)
            e = tl.exp(z - m_ref)
            if WITH_ENTROPY:
                shift = s * tl.where(s > 0, m - m_ref, 0.0)
                a = alpha * (a + shift) + tl.sum(e * tl.where(e > 0, z - m_ref, 0.0), 0)
            s = s * alpha + tl.sum(e, 0)
            m = m_new
        lse = m + tl.log(s)
        target = tl.load(targets_ptr + row).to(tl.int64)
        valid = target != ignore_index
        in_range = (target >= 0) & (target < V)
        xt = tl.load(base + target * stride_lv, mask=valid & in_range, other=float("nan"))
        zt, _ = _transform(xt, scale, softcap, temperature, SOFTCAP)
        logp = zt - lse
        tl.store(logp_ptr + row, tl.where(valid, logp, 0.0))
        tl.store(lse_ptr + row, lse)
        if WITH_ENTROPY:
            tl.store(ent_ptr + row, tl.where(valid, tl.log(s) - a / s, 0.0))

    @triton.jit
    def _logprob_bwd_kernel(
        logits_ptr, targets_ptr, lse_ptr, ent_ptr, grad_lp_ptr, grad_ent_ptr, grad_ptr,
        T, V,
        stride_lb, stride_lt, stride_lv,
        stride_gb, stride_gt, stride_gv,
        scale, softcap, temperature, ignore_index,
        BLOCK_V: tl.constexpr, WITH_ENTROPY: tl.constexpr, SOFTCAP: tl.constexpr,
        BF16_RTNE: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + (row // T) * stride_lb + (row % T) * stride_lt
        gbase = grad_ptr + (row // T) * stride_gb + (row % T) * stride_gt
        target = tl.load(targets_ptr + row).to(tl.int64)
        valid = target != ignore_index
        g_lp = tl.where(valid, tl.load(grad_lp_ptr + row), 0.0)
        lse = tl.load(lse_ptr + row)
        if WITH_ENTROPY:
            g_ent = tl.where(valid, tl.load(grad_ent_ptr + row), 0.0)
            ent = tl.load(ent_ptr + row)
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
            mask = cols < V
            x = tl.load(base + cols * stride_lv, mask=mask, other=0.0)
            z, dz = _transform(x, scale, softcap, temperature, SOFTCAP)
            logp = z - lse
            p = tl.exp(logp)
            grad = tl.where(cols == target, g_lp, 0.0) - g_lp * p
            if WITH_ENTROPY:
                grad -= g_ent * p * tl.where(p > 0, logp + ent, 0.0)
            grad = grad * dz
            if BF16_RTNE:  # fp32 -> bf16 round-to-nearest-even in integer ops (see _bf16_rtne)
                bits = grad.to(tl.uint32, bitcast=True)
                bits += 0x7FFF + ((bits >> 16) & 1)
                out = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
            else:
                out = grad.to(grad_ptr.dtype.element_ty)
            tl.store(gbase + cols * stride_gv, out, mask=mask)


def _bf16_rtne(dtype: torch.dtype) -> bool:
    """Round fp32 -> bf16 by hand? Only in the interpreter, whose fp32 -> bf16 cast truncates
    (triton 3.x ``create_fp_trunc`` ignores the rounding mode); compiled casts already round to
    nearest even. Gradients are finite here, so the integer trick's NaN caveat does not arise.
    """
    return dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET", "0") == "1"


def _launch_cfg(V: int) -> tuple[int, int]:
    """(BLOCK_V, num_warps) for a vocabulary of V: tiles up to 4096 wide."""
    block = min(triton.next_power_of_2(max(V, 1)), 4096)
    return block, (8 if block >= 2048 else 4)


def _scalars(tf: tuple) -> tuple[float, float, float, bool]:
    """(scale, softcap, temperature, SOFTCAP flag) kernel arguments for tf = (scale|None,
    softcap|None, temperature)."""
    scale, cap, temperature = tf
    return (1.0 if scale is None else scale, 1.0 if cap is None else cap, temperature,
            cap is not None)


def _triton_seq_fwd(logits, tflat, tf, ignore_index, want_entropy):
    """Launch the forward kernel on (B, T, V) logits (any strides); tflat (B*T,).

    Returns logp, lse, entropy-or-None, each (B*T,) fp32.
    """
    B, T, V = logits.shape
    N = B * T
    tflat = tflat.contiguous()
    logp = torch.empty(N, dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(logp)
    ent = torch.empty_like(logp) if want_entropy else None
    if N == 0:
        return logp, lse, ent
    block, warps = _launch_cfg(V)
    scale, cap, temperature, with_cap = _scalars(tf)
    _logprob_fwd_kernel[(N,)](
        logits, tflat, logp, lse, ent if want_entropy else lse,
        T, V,
        *logits.stride(),
        scale, cap, temperature, ignore_index,
        BLOCK_V=block, WITH_ENTROPY=want_entropy, SOFTCAP=with_cap, num_warps=warps,
    )
    return logp, lse, ent


def _triton_seq_bwd(logits, tflat, lse, ent, g_lp, g_ent, tf, ignore_index, out=None):
    """Launch the backward kernel; writes grad (B, T, V) in logits' dtype into ``out`` or a new
    contiguous tensor (``out`` may alias ``logits``: each element is read before it is written).
    lse, ent, g_lp, g_ent, tflat: (B*T,) contiguous.
    """
    B, T, V = logits.shape
    grad = torch.empty((B, T, V), dtype=logits.dtype, device=logits.device) if out is None else out
    if B * T == 0:
        return grad
    with_ent = g_ent is not None and ent is not None
    block, warps = _launch_cfg(V)
    scale, cap, temperature, with_cap = _scalars(tf)
    _logprob_bwd_kernel[(B * T,)](
        logits, tflat.contiguous(), lse, ent if with_ent else lse, g_lp,
        g_ent if with_ent else g_lp, grad,
        T, V,
        *logits.stride(), *grad.stride(),
        scale, cap, temperature, ignore_index,
        BLOCK_V=block, WITH_ENTROPY=with_ent, SOFTCAP=with_cap,
        BF16_RTNE=_bf16_rtne(grad.dtype), num_warps=warps,
    )
    return grad
