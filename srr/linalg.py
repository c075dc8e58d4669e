"""Numerically robust linear algebra for coding rates.

Every rate in the library is ``½ logdet(I + s·G)`` for a symmetric positive semi-definite Gram
matrix ``G``: its eigenvalues are ≥ 1, so Cholesky succeeds in exact arithmetic, but in float32 a
large ``s·‖G‖`` can make it fail. Failures are detected from Cholesky's error code *as a tensor*
and the failed matrices alone are redone in float64 (with a relative jitter far below float32
resolution), never returned as a silent NaN.
"""
from __future__ import annotations

import torch
from torch import Tensor


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 at least: half/bfloat16 inputs are promoted so that logdets stay accurate."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def gram(Z: Tensor) -> Tensor:
    """The smaller Gram matrix of ``Z (..., N, d)``: ``ZᵀZ (d×d)`` if ``d ≤ N`` else ``ZZᵀ (N×N)``.

    By Sylvester's identity ``det(I_d + αZᵀZ) = det(I_N + αZZᵀ)``, so either gives the rate.
    """
    return Z.mT @ Z if Z.shape[-1] <= Z.shape[-2] else Z @ Z.mT


def _identity_plus(G: Tensor, scale) -> Tensor:
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    scale = scale[..., None, None] if isinstance(scale, Tensor) else scale
    return eye + scale * G


def _cholesky_logdet(M: Tensor) -> Tensor:
    L = torch.linalg.cholesky_ex(M)[0]  # only non-finite input can still fail here: NaN in, NaN out
    return 2.0 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _masked_logdet(M: Tensor, failed: Tensor) -> Tensor:
    """Redo the matrices flagged in ``failed`` in float64; the others keep the fast path.

    Masking with the identity keeps both branches finite, so ``where`` passes no NaN into the
    gradient of the branch it discards.
    """
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    mask = failed[..., None, None]
    fast = _cholesky_logdet(torch.where(mask, eye, M))
    M64 = torch.where(mask, M, eye).double()
    jitter = 1e-13 * M64.diagonal(dim1=-2, dim2=-1).amax(-1)
    slow = _cholesky_logdet(M64 + jitter[..., None, None] * eye.double())
    return torch.where(failed, slow.to(M.dtype), fast)


def logdet_identity_plus(G: Tensor, scale) -> Tensor:
    """``logdet(I + scale·G)`` for symmetric PSD ``G (..., m, m)``; ``scale`` a float or ``(...)`` tensor.

    Computed in at least float32 with autocast off. On the CPU the error code is read directly
    (no device to synchronise with); elsewhere the check stays on the device (no host sync) and the
    float64 retry is computed for the flagged matrices only, masked.
    """
    with torch.autocast(G.device.type, enabled=False):
        G = G.to(working_dtype(G.dtype))
        M = _identity_plus(G, scale)
        if G.device.type == "cpu" and not torch.compiler.is_compiling():
            L, info = torch.linalg.cholesky_ex(M)
            if not bool(info.any()):
                return 2.0 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            return _masked_logdet(M, info != 0)
        with torch.no_grad():
            failed = torch.linalg.cholesky_ex(M)[1] != 0
        return _masked_logdet(M, failed)


def solve_identity_plus(G: Tensor, scale, B: Tensor) -> Tensor:
    """``(I + scale·G)⁻¹ B`` for symmetric PSD ``G (..., m, m)`` and ``B (..., m, n)``.

    Cholesky solve; where the factorisation fails the general LU solve is used for those matrices.
    Eagerly on the CPU the LU solve is skipped when nothing failed; under ``torch.compile`` both are
    computed and selected with ``where``, so the graph does not branch on data.
    """
    M = _identity_plus(G, scale)
    L, info = torch.linalg.cholesky_ex(M)
    failed = (info != 0)[..., None, None]
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    L = torch.where(failed, eye, L)
    fast = torch.cholesky_solve(B, L)
    if M.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(failed.any()):
        return fast
    slow = torch.linalg.solve(torch.where(failed, M, eye), B)
    return torch.where(failed, slow, fast)
