"""Numerically robust linear algebra for coding rates (E1, E2).

Every rate in the library is ``½ logdet(I + s·G)`` for a symmetric positive semi-definite Gram
matrix ``G``. Float32 tokens lose that value two ways (docs/math.md, "Numerics"): forming ``I + sG``
rounds ``sG`` away when ``s·tr G`` is small, and a float32 Gram moves its zero eigenvalues by about
``eps·‖G‖``, which a large ``s`` turns into spurious ``log(s·eps·‖G‖)`` terms. So Grams are
accumulated and factorised in float64 (they are at most a few hundred wide), a short series
replaces the Cholesky factor when ``s·tr G`` is small, and the gradient ``s (I + sG)⁻¹`` is read off
the same factor. A factorisation that still fails is redone with a relative jitter, never returned
as a silent NaN.

Under ``torch.compile`` (a compiled graph is a model's training or inference step: the derived
layers differentiate a rate's gradient) the rates run in the tokens' working dtype, the logdet as a
second-order expansion at one checked factorisation (``_compiled_logdet``): value, gradient
``s (I + sG)⁻¹`` (well conditioned in float32 at every scale, its eigenvalues lie in (0, s]) and
Hessian exact, no factorisation differentiated. The 1e-4 accuracy of the *values* at extreme scales
(tests/test_rates_float32.py) is the eager guarantee; docs/guide-derive.md, "Compiling derived
layers", has the measurements.
"""
from __future__ import annotations

import torch
from torch import Tensor

GRAM_CHUNK_ROWS = 8192  # ZᵀZ of taller Z is accumulated over row blocks (float64 copy ≤ 8192·d·8 bytes)
SERIES_MAX_TRACE = 1e-3  # s·tr G at or below this: 4-term series, truncation ≤ (s·tr G)⁴/5 relative


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 at least: half/bfloat16 inputs are promoted so that logdets stay accurate."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """The dtype Grams are accumulated and factorised in: float64 wherever the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64


class _Gram(torch.autograd.Function):
    """``ZᵀZ`` (``features=True``) or ``ZZᵀ`` accumulated in float64; the backward stays in ``Z``'s dtype.

    Eager only (also ``_InverseFromCholesky``, ``_LogdetIdentityPlus``): Dynamo cannot trace a custom
    ``jvp``, and a compiled graph would not differentiate a custom backward twice; ``torch.compile``
    takes the plain-op twins ``_compiled_gram``, ``_compiled_logdet``.
    """

    generate_vmap_rule = True  # torch.func: hessian, jacfwd(jacrev)

    @staticmethod
    def forward(Z, features):
        dtype = accumulation_dtype(Z.device)
        if not features:
            Z64 = Z.to(dtype, memory_format=torch.contiguous_format)
            return Z64 @ Z64.mT
        G = None
        for rows in Z.split(GRAM_CHUNK_ROWS, dim=-2):  # tall Z (a data set's features): a bounded float64 copy
            rows = rows.to(dtype, memory_format=torch.contiguous_format)
            G = rows.mT @ rows if G is None else G.add_(rows.mT @ rows)
        return G

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.features = inputs[1]
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (Z,) = ctx.saved_tensors
        grad = grad.to(Z.dtype)  # the gradient needs Z's precision only, not float64's
        sym = grad + grad.mT
        return (Z @ sym if ctx.features else sym @ Z), None


    @staticmethod
    def jvp(ctx, tangent, _):
        (Z,) = ctx.saved_tensors
        Z, tangent = (t.to(accumulation_dtype(t.device)) for t in (Z, tangent))
        half = Z.mT @ tangent if ctx.features else Z @ tangent.mT
        return half + half.mT


def _compiled_gram(Z: Tensor) -> Tensor:
    """``gram`` in plain differentiable ops in ``Z``'s working dtype (a compiled graph does not
    differentiate a custom backward again; the module docstring says why not float64)."""
    Z = Z.to(working_dtype(Z.dtype))
    return Z.mT @ Z if Z.shape[-1] <= Z.shape[-2] else Z @ Z.mT


def gram(Z: Tensor) -> Tensor:
    """The smaller Gram matrix of ``Z (..., N, d)``: ``ZᵀZ (d×d)`` if ``d ≤ N`` else ``ZZᵀ (N×N)``.

    By Sylvester's identity ``det(I_d + αZᵀZ) = det(I_N + αZZᵀ)``, so either gives the rate.
    Accumulated in float64 (``accumulation_dtype``): a float32 Gram of a rank-deficient ``Z`` has
    eigenvalues of ±eps·‖G‖ where they should be 0. ``Z`` may be a strided view (no copy is needed
    before the call: the conversion makes one).
    """
    if torch.compiler.is_compiling():
        return _compiled_gram(Z)
    return _Gram.apply(Z, Z.shape[-1] <= Z.shape[-2])


def _identity_plus(G: Tensor, scale) -> Tensor:
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    scale = scale[..., None, None] if isinstance(scale, Tensor) else scale
    return eye + scale * G


def _series_logdet(X: Tensor) -> Tensor:
    """``logdet(I + X) = Σ_k (−1)^{k+1} tr(X^k)/k`` to k = 4, for symmetric PSD ``X`` with ``tr X ≤ 1e-3``.

    Each ``tr(X^k)`` is a sum of non-negative eigenvalue powers, so it keeps its relative accuracy
    however small ``X`` is; the truncation is ≤ ``(tr X)⁴/5`` relative.
    """
    X2 = X @ X
    t1 = X.diagonal(dim1=-2, dim2=-1).sum(-1)
    t2, t3, t4 = (X * X).sum((-2, -1)), (X2 * X).sum((-2, -1)), (X2 * X2).sum((-2, -1))
    return t1 - t2 / 2 + t3 / 3 - t4 / 4


def _jitter(M: Tensor, failed: Tensor, rounding: float) -> Tensor:
    """``M + δI`` where ``failed``, ``δ = 4m·rounding·max diag M``: the size of the rounding that made it fail."""
    m = M.shape[-1]
    delta = 4 * m * rounding * M.diagonal(dim1=-2, dim2=-1).amax(-1)
    delta = torch.where(failed, delta, torch.zeros_like(delta))
    return M + delta[..., None, None] * torch.eye(m, dtype=M.dtype, device=M.device)


def _checked_cholesky(M: Tensor, rounding: float) -> Tensor:
    """Cholesky factor of symmetric ``M`` whose eigenvalues are ≥ 1 in exact arithmetic.

    ``rounding``: the unit roundoff of the dtype ``G`` was given in. A factorisation that fails
    (rounding made ``M`` indefinite) is redone with a jitter of that size. On the CPU only the failed
    matrices are redone, the jitter growing 100-fold until they factor (the error code is read
    directly); on a device every matrix is refactorised once, jittered where it failed, so the host
    does not wait for the device. (``torch.compile`` takes ``_compiled_logdet``.)
    """
    L, info = torch.linalg.cholesky_ex(M)
    failed = info != 0
    if M.device.type == "cpu":
        for attempt in range(8):
            if not bool(failed.any()):
                break
            retry = failed
            L[retry], info = torch.linalg.cholesky_ex(_jitter(M[retry], retry[retry], rounding * 100**attempt))
            failed = retry.clone()
            failed[retry] = info != 0
        return L
    return torch.where(failed[..., None, None], torch.linalg.cholesky_ex(_jitter(M, failed, rounding))[0], L)


def inverse_from_cholesky(L: Tensor) -> Tensor:
    """``M⁻¹ = L⁻ᵀ L⁻¹`` from the lower Cholesky factor ``L (..., m, m)`` of ``M``: a triangular solve and a
    product (on the CPU 2× faster than ``torch.cholesky_inverse``)."""
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device)
    L_inv = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)
    return L_inv.mT @ L_inv


class _InverseFromCholesky(torch.autograd.Function):
    """``(I + sG)⁻¹`` from its Cholesky factor ``L``, differentiable in ``G`` and ``s`` (not in ``L``)."""

    generate_vmap_rule = True  # torch.func: hessian, jacfwd(jacrev)

    @staticmethod
    def forward(G, scale, L):
        return inverse_from_cholesky(L)

    @staticmethod
    def setup_context(ctx, inputs, output):
        G, scale, _ = inputs
        ctx.scale = scale
        saved = (G, output, scale if isinstance(scale, Tensor) else None)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, grad):
        G, M_inv, scale_t = ctx.saved_tensors
        scale = ctx.scale if scale_t is None else scale_t
        grad_M = -(M_inv @ grad @ M_inv)  # d(M⁻¹) = −M⁻¹ dM M⁻¹, dM = s dG + ds G
        return _scale_grads(ctx, grad_M, G, scale) + (None,)

    @staticmethod
    def jvp(ctx, tangent_G, tangent_scale, _):
        G, M_inv, scale_t = ctx.saved_tensors
        dM = _tangent_M(G, ctx.scale if scale_t is None else scale_t, tangent_G, tangent_scale)
        return -(M_inv @ dM @ M_inv)


def _tangent_M(G: Tensor, scale, tangent_G: Tensor | None, tangent_scale: Tensor | None) -> Tensor:
    """``dM = s dG + ds G`` for ``M = I + sG`` (forward mode)."""
    dM = torch.zeros_like(G)
    if tangent_G is not None:
        dM = dM + tangent_G * (scale[..., None, None] if isinstance(scale, Tensor) else scale)
    if tangent_scale is not None:
        dM = dM + tangent_scale[..., None, None] * G
    return dM


def _scale_grads(ctx, grad_M: Tensor, G: Tensor, scale, weight: Tensor | None = None) -> tuple:
    """Gradients in ``G`` and ``s`` of a function of ``M = I + sG``, given ``weight·grad_M`` (``weight (...)``)."""
    grad_G = grad_scale = None
    if ctx.needs_input_grad[0]:
        factor = scale if weight is None else weight * scale  # (...) or a float: one pass over grad_M
        grad_G = grad_M * (factor[..., None, None] if isinstance(factor, Tensor) else factor)
    if isinstance(scale, Tensor) and ctx.needs_input_grad[1]:
        grad_scale = (grad_M * G).sum((-2, -1))
        grad_scale = (grad_scale if weight is None else weight * grad_scale).sum_to_size(scale.shape)
    return grad_G, grad_scale


class _LogdetIdentityPlus(torch.autograd.Function):
    """``logdet(I + sG)`` and its gradient ``s (I + sG)⁻¹`` from one Cholesky factor (no second one)."""

    generate_vmap_rule = True  # torch.func: hessian, jacfwd(jacrev)

    @staticmethod
    def forward(G, scale, rounding):
        M = G * (scale[..., None, None] if isinstance(scale, Tensor) else scale)
        M.diagonal(dim1=-2, dim2=-1).add_(1.0)  # I + sG in one pass over G
        L = _checked_cholesky(M, rounding)
        logdet = 2.0 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        trace = scale * G.diagonal(dim1=-2, dim2=-1).sum(-1)  # s·tr G ≥ logdet(I + sG)
        small = trace <= SERIES_MAX_TRACE
        if bool(small.any()):
            X = G * (scale[..., None, None] if isinstance(scale, Tensor) else scale)
            logdet = torch.where(small, _series_logdet(X), logdet)
        return logdet, L

    @staticmethod
    def setup_context(ctx, inputs, output):
        G, scale, _ = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.scale = scale
        saved = (G, output[1], scale if isinstance(scale, Tensor) else None)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, grad, _):
        G, L, scale_t = ctx.saved_tensors
        scale = ctx.scale if scale_t is None else scale_t
        M_inv = _InverseFromCholesky.apply(G, scale, L)
        return _scale_grads(ctx, M_inv, G, scale, weight=grad) + (None,)

    @staticmethod
    def jvp(ctx, tangent_G, tangent_scale, _):
        G, L, scale_t = ctx.saved_tensors
        scale = ctx.scale if scale_t is None else scale_t
        M_inv = _InverseFromCholesky.apply(G, scale, L)
        return (M_inv * _tangent_M(G, scale, tangent_G, tangent_scale)).sum((-2, -1)), None


def _compiled_logdet(G: Tensor, scale, rounding: float) -> Tensor:
    """``_LogdetIdentityPlus`` in plain differentiable ops, for ``torch.compile``: exact to second order.

    With ``M = I + sG`` and, from one checked factorisation without gradient, ``M₀ = M`` (value),
    ``W = M₀⁻¹`` (from the factor ``L``) and ``logdet M₀``, it returns

        logdet M₀ + tr(W ΔM) − ½ tr(W ΔM W ΔM),      ΔM = M − M₀ (zero in value),

    whose value, gradient ``W = M⁻¹`` (times ``s``: the E5/E6 coefficient) and Hessian
    ``−W dM W`` are those of ``logdet M`` at ``G``: what a derived layer (its forward takes the
    gradient, training differentiates it once more) needs, in matrix products inductor fuses.
    Differentiating the factorisation itself (twice) made compiled ``crate_derived`` slower than
    eager. Third derivatives are not those of ``logdet``. Failures are found without gradient and
    the factorisation redone, jittered where it failed, so no branch of the graph carries a NaN.
    """
    scale_t = scale[..., None, None] if isinstance(scale, Tensor) else scale
    M = G * scale_t + torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    with torch.no_grad():  # constants for every level of differentiation (torch.func.grad respects it)
        M0 = M.clone()
        failed = torch.linalg.cholesky_ex(M0)[1] != 0
        L = torch.linalg.cholesky_ex(_jitter(M0, failed, rounding))[0]
        logdet0 = 2.0 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        W = inverse_from_cholesky(L)  # M₀⁻¹
    WdM = W @ (M - M0)
    return logdet0 + WdM.diagonal(dim1=-2, dim2=-1).sum(-1) - 0.5 * (WdM * WdM.mT).sum((-2, -1))


def logdet_identity_plus(G: Tensor, scale) -> Tensor:
    """``logdet(I + scale·G)`` for symmetric PSD ``G (..., m, m)``; ``scale`` a float or ``(...)`` tensor.

    The logdet of (E1) and (E2). Factorised in float64 (``accumulation_dtype``) with autocast off
    and returned in ``G``'s working dtype (float32 at least), within 1e-4 relative of the exact
    value of the given ``G`` at every scale: a 4-term series where ``scale·tr G ≤ 1e-3``, Cholesky
    elsewhere (jittered where rounding makes it fail: finite ``G``, finite value). Eagerly the
    backward is ``scale·(I + scale·G)⁻¹`` from the same factor (a triangular inverse, no second
    factorisation), itself differentiable in reverse and forward mode; under ``torch.compile``
    a second-order expansion at the factorised point (``_compiled_logdet``).
    """
    with torch.autocast(G.device.type, enabled=False):
        out_dtype = working_dtype(G.dtype)
        rounding = torch.finfo(out_dtype).eps  # G's own rounding: what a failed factorisation is jittered by
        if torch.compiler.is_compiling():  # the tokens' working dtype, one factorisation: module docstring
            G = G.to(out_dtype)
            return _compiled_logdet(G, scale.to(out_dtype) if isinstance(scale, Tensor) else scale, rounding)
        G = G.to(accumulation_dtype(G.device))
        if isinstance(scale, Tensor):
            scale = scale.to(G.dtype)
        return _LogdetIdentityPlus.apply(G, scale, rounding)[0].to(out_dtype)


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
