"""``ExactCompression``: the exact gradient step on R^c (E6), ours (neither paper's models use it).

    update(x) = −κ ∇_x R^c(x; U) = −s · C W,   C_k = A_k S_k⁻¹,   A_k = x W_kᵀ,   S_k = I_p + β A_kᵀA_k

with ``W = qkv.weight (K·p, d)``, ``β = p/(Nε²)``, ``s = κβ``; ``step(x) = x + forward(x)``. The fused
path (:class:`ExactCompressionStep`) has a hand-written, first-order backward; ``backend="reference"``
is the derived step. The backward's formulas and precision: ``docs/guide-layers.md``, section
``srr/layers/exact.py``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from srr._checks import check_choice, check_eps, check_int, check_positive
from srr.derivation import compression_step_size, derive_step
from srr.linalg import working_dtype
from srr.objective import CompressedCodingRate
from srr.rates import rate_scale

BACKENDS = ("auto", "fused", "reference")


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


class ExactCompression(nn.Module):
    """The exact compression step (E6): ``x (..., N, dim) -> update −κ∇R^c(x; U, ε) (..., N, dim)``.

    Weights: ``qkv.weight = W (heads·head_dim, dim)`` (the public key), ``subspaces = U (heads, dim,
    head_dim)`` with ``U_k = W_kᵀ``. ``step_size`` κ: a number, or ``"auto"`` for 1/L of (E7), recomputed
    per forward. ``backend``: ``"auto"``/``"fused"`` (:class:`ExactCompressionStep`) or ``"reference"``
    (the derived autodiff step, twice differentiable).
    """

    def __init__(self, dim: int, *, heads: int, head_dim: int | None = None, eps: float = 0.5,
                 step_size: float | str = 1.0, orthonormal: bool = False, backend: str = "auto"):
        super().__init__()
        self.dim, self.heads = check_int(dim, "dim", minimum=1), check_int(heads, "heads", minimum=1)
        self.head_dim = check_int(dim // heads if head_dim is None else head_dim, "head_dim", minimum=1)
        eps = check_eps(eps)
        if not isinstance(eps, float):
            raise ValueError(f"eps must be one finite number > 0 (ε, not ε²), got {eps!r}")
        self.eps = eps
        self.step_size = "auto" if step_size == "auto" else check_positive(step_size, "step_size (κ, or 'auto')")
        self.backend = check_choice(backend, "backend", BACKENDS)
        inner = self.heads * self.head_dim
        self.qkv = nn.Linear(dim, inner, bias=False)  # W: (K·p, d)
        if orthonormal:
            if inner > dim:
                raise ValueError(f"orthonormal subspaces need heads·head_dim <= dim, got {inner} > {dim}")
            nn.utils.parametrizations.orthogonal(self.qkv)  # orthonormal rows of W = columns of U

    @property
    def subspaces(self) -> Tensor:
        """``U (K, d, p)``, a differentiable view of ``qkv.weight``: ``U_k = W_kᵀ``."""
        return self.qkv.weight.unflatten(0, (self.heads, self.head_dim)).transpose(1, 2)

    def kappa(self, N: int) -> float:
        """The step size κ for ``N`` tokens (``"auto"``: 1/L of E7)."""
        if self.step_size == "auto":
            return compression_step_size(self.subspaces, self.eps, N)
        return self.step_size

    def forward(self, x: Tensor) -> Tensor:  # (..., N, d) -> (..., N, d)
        if self.backend == "reference":
            return self.reference(x)
        kappa = self.kappa(x.shape[-2])
        dev = x.device.type
        amp = torch.is_autocast_enabled(dev)
        dtype = torch.get_autocast_dtype(dev) if amp else working_dtype(x.dtype)
        with torch.autocast(dev, enabled=False):  # the Function picks its own precision per operation
            W = self.qkv.weight.to(dtype)  # (K·p, d)
            update = exact_compression_update(x.to(dtype), W, heads=self.heads, eps=self.eps, step_size=kappa)
        return update if amp else update.to(x.dtype)  # (..., N, d)

    def step(self, x: Tensor) -> Tensor:
        """The next tokens ``x − κ∇R^c(x)``."""
        return x + self.forward(x)

    def reference(self, x: Tensor) -> Tensor:
        """The *derived* update ``−κ ∇R^c`` (``derive_step``'s autodiff gradient, E6), used by
        :func:`srr.layers.check`; taken directly rather than as ``step(x) − x``, which would cancel
        digits when the update is small."""
        step = derive_step(CompressedCodingRate(eps=self.eps), step_size=self.kappa(x.shape[-2]))
        return -step.resolve_step_size(x, {"U": self.subspaces}) * step.gradient(x, U=self.subspaces)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, head_dim={self.head_dim}, eps={self.eps}, "
                f"step_size={self.step_size}, backend={self.backend!r}")
