"""Triton kernel for the ISTA step (E10') on the GPU: one matmul with a fused epilogue.

    Y = prox(X + X M − t),   M = η (D − DᵀD),   t = ηλ,   prox = ReLU or soft thresholding

One pass over ``X``: the tile of ``X M`` is accumulated in float32, then ``X``'s own tile (the
identity part of ``I + M``, added exactly rather than rounded into ``M``), the threshold and the
ReLU are applied before the single store. ``t`` is read from device memory, so a learnable λ costs
no host synchronisation. The backward pass is plain torch: ``G = dY ⊙ prox'(·)`` from the saved
output, ``dX = G + G Mᵀ``, ``dM = Xᵀ G``, ``dt = −Σ G (·sign)``.

Tested on the CPU with ``TRITON_INTERPRET=1`` (set before importing triton).
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def available(x: Tensor) -> bool:
    """Whether the kernel can run on ``x``: triton importable, and a CUDA tensor (or the interpreter)."""
    return triton is not None and x.dtype in DTYPES and (x.is_cuda or (INTERPRETED and x.device.type == "cpu"))


if triton is not None:

    @triton.jit
    def _ista_kernel(x_ptr, m_ptr, t_ptr, y_ptr, T, D,
                     stride_xt, stride_xd, stride_mk, stride_mn, stride_yt, stride_yd,
                     NONNEG: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_t = tl.program_id(0)
        pid_n = tl.program_id(1)
        rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # tokens
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output features
        acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=ACC)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + rows[:, None] * stride_xt + ks[None, :] * stride_xd,
                        mask=(rows[:, None] < T) & (ks[None, :] < D), other=0.0)
            m = tl.load(m_ptr + ks[:, None] * stride_mk + cols[None, :] * stride_mn,
                        mask=(ks[:, None] < D) & (cols[None, :] < D), other=0.0)
            acc = tl.dot(x, m, acc, input_precision=PRECISION, out_dtype=ACC)
        inside = (rows[:, None] < T) & (cols[None, :] < D)
        x_own = tl.load(x_ptr + rows[:, None] * stride_xt + cols[None, :] * stride_xd, mask=inside, other=0.0)
        t = tl.load(t_ptr).to(ACC)
        v = acc + x_own.to(ACC)
        if NONNEG:
            y = tl.maximum(v - t, 0.0)
        else:
            y = tl.where(v > t, v - t, tl.where(v < -t, v + t, 0.0))
        tl.store(y_ptr + rows[:, None] * stride_yt + cols[None, :] * stride_yd, y.to(y_ptr.dtype.element_ty),
                 mask=inside)


def _launch(x: Tensor, M: Tensor, t: Tensor, nonnegative: bool) -> Tensor:
    T, D = x.shape
    y = torch.empty_like(x)
    if x.dtype in (torch.float16, torch.bfloat16):
        blocks, warps, stages, precision = (128, 128, 64), 8, 3, "ieee"
    else:
        tf32 = x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
        blocks, warps, stages, precision = (64, 64, 32), 4, 3, "tf32" if tf32 else "ieee"
    if INTERPRETED:
        blocks = (32, 32, 16)
    BT, BN, BK = blocks
    grid = (triton.cdiv(T, BT), triton.cdiv(D, BN))
    _ista_kernel[grid](x, M, t, y, T, D, x.stride(0), x.stride(1), M.stride(0), M.stride(1),
                       y.stride(0), y.stride(1), NONNEG=nonnegative, PRECISION=precision,
                       ACC=tl.float64 if x.dtype == torch.float64 else tl.float32,
                       BLOCK_T=BT, BLOCK_N=BN, BLOCK_K=BK, num_warps=warps, num_stages=stages)
    return y


class _ISTAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, M: Tensor, t: Tensor, nonnegative: bool) -> Tensor:
        y = _launch(x, M, t, nonnegative)
        ctx.save_for_backward(x, M, y)
        ctx.nonnegative = nonnegative
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, M, y = ctx.saved_tensors
        G = dy * (y > 0) if ctx.nonnegative else dy * (y != 0)  # (T, D)
        dx = torch.addmm(G, G, M.mT) if ctx.needs_input_grad[0] else None
        dM = x.mT @ G if ctx.needs_input_grad[1] else None
        dt = None
        if ctx.needs_input_grad[2]:
            dt = -(G.sum() if ctx.nonnegative else (G * torch.sign(y)).sum()).reshape(1)
        return dx, dM, dt, None


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def ista_triton(x: Tensor, M: Tensor, threshold: Tensor | float, *, nonnegative: bool = True) -> Tensor:
    """``prox(x + x M − threshold)`` for ``x (T, d)``, ``M (d, d)``, a number or one-element ``threshold``.

    ``x`` and ``M`` must share a dtype; the output has it (accumulation is float32, or float64).
    """
    if triton is None:
        raise RuntimeError("ista_triton needs triton, which is not installed; use ISTA(backend='torch')")
    if x.ndim != 2 or M.shape != (x.shape[1], x.shape[1]):
        raise ValueError(f"x must be (T, d) and M (d, d), got x {tuple(x.shape)} and M {tuple(M.shape)}")
    if M.dtype != x.dtype:
        raise TypeError(f"x and M must share a dtype, got {x.dtype} and {M.dtype}")
    acc = _accumulator(x.dtype)
    if isinstance(threshold, Tensor):
        t = threshold.reshape(1).to(acc)
    else:
        t = torch.full((1,), float(threshold), dtype=acc, device=x.device)
    return _ISTAFunction.apply(x.contiguous(), M.contiguous(), t, nonnegative)
