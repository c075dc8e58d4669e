"""μ_SRR (E4) at the MSSA input ``X = LN₁(Z^ℓ)``, read off the model's own projection ``A = X Uᵀ`` (qkv).

A CRATE layer with a softmax MSSA computes ``A_k = LN₁(Z^ℓ) U_k^ℓ`` itself (``MSSA._attend``: ``qkv(x)``), the
site and subspaces of YU23's R^c (MATH.md §5c). At that site the regulariser needs no projection of its
own: R^c (E2) from the K per-head Grams ``A_kᵀA_k``, R (E1) from the smaller Gram of X, ‖X‖₀ by a count.
Why this site, and the detached form here: ``docs/guide-measurement.md``, section ``srr/measurement/regularizer.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from srr.layers import MSSA
from srr.linalg import gram, logdet_identity_plus
from srr.models.variants import variants_where
from srr.measurement.terms import SRRTerms, sparsity_counts, terms_from_parts
from srr.rates import coding_rate, rate_scale

__all__ = ["ProjectionCapture", "projection_mssa", "projection_terms"]

SUPPORTED = tuple(variants_where(qkv_projection=True))  # the variants with a softmax MSSA and its qkv


def projection_mssa(block: nn.Module, label: str) -> tuple[nn.LayerNorm, MSSA]:
    """``(LN₁, MSSA)`` of a CRATE block whose compression step is a softmax MSSA with a qkv projection."""
    compression = getattr(block, "compression", None)
    norm = getattr(block[0], "norm", None) if isinstance(block, nn.ModuleList) and len(block) else None
    if not isinstance(compression, MSSA) or not isinstance(norm, nn.LayerNorm):
        found = type(compression).__name__ if compression is not None else type(block).__name__
        raise ValueError(f"site='projection' reads the qkv projection of a CRATE block's softmax MSSA; layer "
                         f"{label!r} has {found} (supported variants: {', '.join(SUPPORTED)}; "
                         f"{', '.join(variants_where(qkv_projection=False))} and non-CRATE models have no qkv "
                         f"projection: use site='output')")
    return norm, compression


class _ReadProjection(torch.autograd.Function):
    """``A = X Wᵀ`` as the model computed it (no recomputation); backward sends the term's gradient to
    ``X`` and ``W`` only (``g W``, ``gᵀX``), never into the model's graph behind ``A``."""

    @staticmethod
    def forward(ctx, A: Tensor, X: Tensor, W: Tensor) -> Tensor:
        ctx.save_for_backward(X, W)
        return A.view_as(A)

    @staticmethod
    def backward(ctx, grad: Tensor):
        X, W = ctx.saved_tensors
        grad = grad.to(W.dtype)  # (..., N, K·p)
        grad_W = grad.reshape(-1, grad.shape[-1]).mT @ X.reshape(-1, X.shape[-1]).to(W.dtype)  # (K·p, d)
        return None, (grad @ W).to(X.dtype), grad_W


class ProjectionCapture:
    """Forward hooks on LN₁ and on the MSSA's ``qkv`` of one block: ``tokens()`` gives ``(X, A)``.

    ``detach``: HU24's per-layer form. X is recomputed as ``LN₁(detach(Z^ℓ))`` (a LayerNorm, no matmul) and
    A is the model's own output read through :class:`_ReadProjection`, so the term's gradient reaches
    LN₁'s γ, β and U^ℓ and stops at Z^ℓ; the model's graph, and so the task gradient, are untouched.
    """

    def __init__(self, block: nn.Module, label: str, *, detach: bool):
        self.norm, self.mssa = projection_mssa(block, label)
        self.detach = detach
        self._seen: dict[str, Tensor] = {}
        self.handles = [self.mssa.qkv.register_forward_hook(self._qkv_hook)]
        if detach:
            self.handles.append(self.norm.register_forward_hook(self._norm_hook))

    def _norm_hook(self, module, args, output):
        self._seen["Z"] = args[0]

    def _qkv_hook(self, module, args, output):
        self._seen["X"], self._seen["A"] = args[0], output  # the last call wins (backend="reference" calls twice)

    @property
    def captured(self) -> bool:
        return "A" in self._seen

    def tokens(self) -> tuple[Tensor, Tensor]:
        """``(X (B, N, d), A (B, N, K·p))`` of the last forward pass; cleared once read."""
        seen, self._seen = self._seen, {}
        X, A = seen["X"], seen["A"]
        Z = seen.get("Z")
        if self.detach and Z is not None and torch.is_grad_enabled() and A.requires_grad:
            n = self.norm
            X = F.layer_norm(Z.detach(), n.normalized_shape, n.weight, n.bias, n.eps)  # = X, bit for bit
            A = _ReadProjection.apply(A, X, self.mssa.qkv.weight)
        return X, A

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self._seen = [], {}


def projection_terms(X: Tensor, A: Tensor, heads: int, *, eps: float, lam: float) -> SRRTerms:
    """Per-sample parts of μ_SRR (E4) of the token sets ``X (B, N, d)``, from their projections
    ``A = [A_1 … A_K] (B, N, K·p)`` (``A_k = X U_k``): R (E1) from the smaller Gram of X, R^c (E2) from the
    K p×p (or N×N) Grams of the A_k, ‖X‖₀ and ‖X‖₁. Grams accumulated and factorised in float64
    (``srr.linalg``); values in X's working dtype."""
    N, d = X.shape[-2:]
    R = coding_rate(X, eps, check_finite=False)  # (B,)
    heads_A = A.unflatten(-1, (heads, -1)).transpose(-3, -2)  # (B, K, N, p), a strided view
    with torch.autocast(A.device.type, enabled=False):
        G = gram(heads_A)  # (B, K, m, m) float64, m = min(p, N)
        Rc = (0.5 * logdet_identity_plus(G, rate_scale(heads_A.shape[-1], N, eps))).sum(-1).to(R.dtype)  # (B,)
    return terms_from_parts(R, Rc, *sparsity_counts(X, R.dtype), size=N * d, lam=lam)
