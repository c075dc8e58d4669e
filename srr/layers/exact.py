"""The exact compression step (E6) with a hand-written backward pass: the hot path of ``MSSA(mode="exact")``.

    update(x) = −κ ∇_x R^c(x; U) = −s · C W,   C_k = A_k S_k⁻¹,   A_k = x W_kᵀ,   S_k = I_p + β A_kᵀA_k

with ``W = qkv.weight (K·p, d)`` (``U_k = W_kᵀ``), ``β = p/(Nε²)`` and ``s = κβ``. Tokens see two
matmuls forward and four backward (the minimum for gradients in ``x`` and ``W``); everything else
is per head and p×p. The p×p inverses are formed once in the forward pass and reused by the
backward pass, which autograd through a Cholesky solve cannot do:

    H = −s · g Wᵀ,   Q_k = C_kᵀ H_k S_k⁻¹,   ∂A_k = H_k S_k⁻¹ − β A_k (Q_k + Q_kᵀ)
    ∂x = ∂A W,   ∂W = ∂Aᵀ x − s · Cᵀ g

Token-wise matmuls run in the dtype of ``x`` and ``W`` (bfloat16 under autocast), the per-head
algebra (Gram, inverse, ∂A) in float32 or wider. The backward pass is not itself differentiable (``once_differentiable``): for second order use the
derived step (``MSSA.reference``), which autograd differentiates twice.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from srr.linalg import working_dtype
from srr.rates import rate_scale


def _heads(A: Tensor, K: int) -> Tensor:
    """``(B, N, K·p) -> (B, K, N, p)``, contiguous."""
    return A.unflatten(-1, (K, -1)).transpose(1, 2).contiguous()


def _tokens(A: Tensor) -> Tensor:
    """``(B, K, N, p) -> (B, N, K·p)``."""
    return A.transpose(1, 2).flatten(2)


def _inverse(S: Tensor) -> Tensor:
    """``S⁻¹`` of the SPD matrices ``S = I + βAᵀA`` (eigenvalues ≥ 1), symmetrised."""
    Sinv = torch.linalg.inv_ex(S)[0]
    return 0.5 * (Sinv + Sinv.mT)


class ExactCompressionStep(torch.autograd.Function):
    """``(x (B, N, d), W (K·p, d), K, β, s) -> −s · C W (B, N, d)``; see the module docstring."""

    @staticmethod
    def forward(ctx, x: Tensor, W: Tensor, heads: int, beta: float, scale: float) -> Tensor:
        wd = working_dtype(x.dtype)  # token-wise matmuls in x's dtype, the per-head algebra in >= float32
        A = _heads((x @ W.mT).to(wd), heads)  # (B, K, N, p)
        eye = torch.eye(A.shape[-1], dtype=wd, device=A.device)
        S = torch.baddbmm(eye, A.flatten(0, 1).mT, A.flatten(0, 1), alpha=beta)  # I + βAᵀA: (B·K, p, p)
        Sinv = _inverse(S).unflatten(0, A.shape[:2])  # (B, K, p, p)
        C = _tokens(A @ Sinv).to(x.dtype)  # (B, N, K·p)
        ctx.save_for_backward(x, W, A, Sinv, C)
        ctx.heads, ctx.beta, ctx.scale = heads, beta, scale
        return (C @ W).mul_(-scale)  # (B, N, d)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        x, W, A, Sinv, C = ctx.saved_tensors
        beta, s, wd = ctx.beta, ctx.scale, A.dtype
        H = _heads((g @ W.mT).to(wd).mul_(-s), ctx.heads)  # ∂C: (B, K, N, p)
        Q = (_heads(C.to(wd), ctx.heads).mT @ H) @ Sinv  # (B, K, p, p)
        dA = torch.baddbmm((H @ Sinv).flatten(0, 1), A.flatten(0, 1), (Q + Q.mT).flatten(0, 1), alpha=-beta)
        dA = _tokens(dA.unflatten(0, A.shape[:2])).to(x.dtype)  # (B, N, K·p)
        dx = dA @ W if ctx.needs_input_grad[0] else None
        dW = None
        if ctx.needs_input_grad[1]:
            dW = dA.flatten(0, 1).mT @ x.flatten(0, 1)  # (K·p, d)
            dW.addmm_(C.flatten(0, 1).mT, g.flatten(0, 1), alpha=-s)
        return dx, dW, None, None, None


def exact_compression_update(x: Tensor, W: Tensor, *, heads: int, eps: float, step_size: float) -> Tensor:
    """``−κ ∇_x R^c(x; U, ε)`` for ``x (..., N, d)`` and ``W = Uᵀ (K·p, d)`` (E6), by :class:`ExactCompressionStep`."""
    N, d = x.shape[-2:]
    p = W.shape[0] // heads
    beta = rate_scale(p, N, eps)
    x3 = x.reshape(-1, N, d)  # (B, N, d)
    return ExactCompressionStep.apply(x3, W, heads, beta, step_size * beta).reshape(x.shape)
