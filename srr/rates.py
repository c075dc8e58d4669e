"""The sparse rate reduction objective as plain functions (MATH.md §2–3).

Tokens are rows: ``Z (..., N, d)``; subspaces ``U (K, d, p)``; ``eps`` is ε (never ε²). Every function
returns one value per token set, shape ``(...)``, and is differentiable (twice) with autograd.

- (E1) ``coding_rate``             R(Z; ε)    = ½ logdet(I_d + α ZᵀZ),          α = d/(Nε²)
- (E2) ``compressed_coding_rate``  R^c(Z; U)  = Σ_k ½ logdet(I_p + β A_kᵀA_k),   β = p/(Nε²), A_k = Z U_k
- (E3) ``rate_reduction``          ΔR = R − R^c
- (E4) ``sparse_rate_reduction``   μ_SRR = λ‖Z‖₀ + R^c − R   (the measure form, to minimise)
- (E5), (E6) closed-form gradients ``coding_rate_grad``, ``compressed_coding_rate_grad``
- (E12), (E13) ``variational_compressed_coding_rate`` R^c_var(Z; U, Π) (ToST) and its gradient with Π fixed

The one home of each formula: ``rate_scale`` (α, β), ``subspace_eps`` (ε: a float or ``(K,)``),
``rates_from_gram`` (R, R^c from ``ZᵀZ``), ``srr_from_parts`` (μ_SRR), the Lipschitz bounds (E7, E11).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from srr._checks import check_eps, check_finite_gram, check_int, check_lam, check_subspaces, check_tokens
from srr.linalg import accumulation_dtype, gram, logdet_identity_plus, solve_identity_plus, working_dtype


def _promote(Z: Tensor) -> Tensor:
    return Z.to(working_dtype(Z.dtype))


def _project(Z: Tensor, U: Tensor, *, contiguous: bool = True) -> Tensor:
    """``A_k = Z U_k`` for all k at once: ``(..., N, d), (K, d, p) -> (..., K, N, p)``.

    ``contiguous=False`` returns a strided view (``gram`` copies it while converting to float64).
    """
    K, d, p = U.shape
    A = Z @ U.permute(1, 0, 2).reshape(d, K * p)  # (..., N, K·p)
    A = A.unflatten(-1, (K, p)).transpose(-3, -2)  # (..., K, N, p)
    return A.contiguous() if contiguous else A  # contiguous: faster Grams and solves


PROJECTION_RISK = 1e-6  # β·‖A_k‖_F²·eps² above which a float32 A_k's rounding shows in R^c at 1e-4


def _projection_rounding_shows(G: Tensor, beta, dtype: torch.dtype) -> bool:
    """Whether rounding ``A_k = Z U_k`` to ``dtype`` may move R^c by more than 1e-4 relative (eager only).

    Rounding perturbs A_k by ``eps·‖A_k‖``, which lifts the zero (or tiny) singular values of a
    rank-deficient A_k to about that, adding up to ``β·eps²·‖A_k‖_F²`` per direction to its logdet:
    negligible for LayerNorm-scale tokens (~1e-10), not for huge rank-deficient ones (docs/math.md).
    """
    if dtype == torch.float64 or torch.compiler.is_compiling():
        return False
    risk = (beta * G.diagonal(dim1=-2, dim2=-1).sum(-1)).amax() * torch.finfo(dtype).eps ** 2
    return bool(risk > PROJECTION_RISK)


def subspace_eps(eps, K: int, ref: Tensor | None = None) -> float | Tensor:
    """ε validated once: a float, or a ``(K,)`` tensor (one ε per subspace; from a tensor, tuple or list).

    A tensor is moved to ``ref``'s device and dtype when ``ref`` is given.
    """
    eps = check_eps(eps)
    if isinstance(eps, Tensor):
        if eps.shape != (K,):
            raise ValueError(f"eps given per subspace must have shape ({K},) to match U's K={K}, got "
                             f"{tuple(eps.shape)}")
        if ref is not None:
            eps = eps.to(device=ref.device, dtype=ref.dtype)
    return eps


def rate_scale(width: int, N: int, eps) -> float | Tensor:
    """The scale of a rate's logdet: ``α = d/(Nε²)`` (E1, width d) or ``β = p/(Nε²)`` (E2, width p).

    ``eps`` is a float, or a ``(K,)`` tensor giving one β per subspace.
    """
    return width / (N * eps**2)


def _single_eps(eps, caller: str) -> float:
    eps = check_eps(eps)
    if isinstance(eps, Tensor):
        raise ValueError(f"eps of {caller} must be a single float, got a tensor of shape {tuple(eps.shape)}")
    return eps


def coding_rate(Z: Tensor, eps: float, *, check_finite: bool = True) -> Tensor:
    """(E1) ``R(Z; ε) = ½ logdet(I_d + α ZᵀZ)``, ``α = d/(Nε²)``. ``(..., N, d) -> (...)``.

    Uses the smaller of the d×d and N×N Gram matrices (Sylvester), never both. NaN/Inf in ``Z``
    are detected on that Gram (``check_finite=False`` skips the check).
    """
    check_tokens(Z, "Z", check_finite=False)
    eps = _single_eps(eps, "coding_rate")
    N, d = Z.shape[-2:]
    with torch.autocast(Z.device.type, enabled=False):
        G = gram(Z)  # float64 (srr.linalg.gram)
        if check_finite:
            check_finite_gram(G.diagonal(dim1=-2, dim2=-1), Z)  # NaN/Inf in Z reach the diagonal
        return (0.5 * logdet_identity_plus(G, rate_scale(d, N, eps))).to(working_dtype(Z.dtype))


def compressed_coding_rate(Z: Tensor, U: Tensor, eps, *, per_subspace: bool = False,
                           check_finite: bool = True) -> Tensor:
    """(E2) ``R^c(Z; U, ε) = Σ_k ½ logdet(I_p + β A_kᵀA_k)``, ``β = p/(Nε²)``, ``A_k = Z U_k``.

    ``Z (..., N, d)``, ``U (K, d, p)`` -> ``(...)``, or ``(..., K)`` with ``per_subspace=True``.
    ``eps`` may be one float or K values (one ε per subspace). The K logdets are one batched
    call; each uses the smaller of the p×p and N×N Gram matrices.
    """
    check_tokens(Z, "Z", check_finite=False)
    check_subspaces(U, Z.shape[-1])
    K, _, p = U.shape
    N = Z.shape[-2]
    with torch.autocast(Z.device.type, enabled=False):
        Zw, Uw = _promote(Z), U.to(working_dtype(Z.dtype))
        eps = subspace_eps(eps, K, Zw)
        G = gram(_project(Zw, Uw, contiguous=False))  # (..., K, m, m) float64, m = min(p, N)
        if check_finite:
            check_finite_gram(G.diagonal(dim1=-2, dim2=-1), Z)  # NaN/Inf in Z reach the diagonal
        beta = rate_scale(p, N, eps)
        if _projection_rounding_shows(G, beta, Zw.dtype):
            G = gram(_project(Zw.double(), Uw.double()))
        per_head = (0.5 * logdet_identity_plus(G, beta)).to(Zw.dtype)  # (..., K)
    return per_head if per_subspace else per_head.sum(-1)


def rate_reduction(Z: Tensor, U: Tensor, eps: float, *, check_finite: bool = True) -> Tensor:
    """(E3) ``ΔR(Z; U, ε) = R(Z; ε) − R^c(Z; U, ε)``. It has no fixed sign (see MATH.md E3)."""
    R = coding_rate(Z, eps, check_finite=check_finite)
    return R - compressed_coding_rate(Z, U, eps, check_finite=False)


class Sparsity(NamedTuple):
    """Sparsity of token sets, each of shape ``(...)``."""

    zero_fraction: Tensor  # fraction of exactly-zero entries of Z
    l0: Tensor  # ‖Z‖₀: number of non-zero entries
    l1: Tensor  # ‖Z‖₁: sum of absolute values


def sparsity(Z: Tensor) -> Sparsity:
    """Exact-zero fraction, ‖Z‖₀ and ‖Z‖₁ of each token set ``(..., N, d)``, summed over N and d."""
    check_tokens(Z, "Z", check_finite=False)
    nonzero = (Z != 0).sum((-2, -1))
    size = Z.shape[-2] * Z.shape[-1]
    return Sparsity(1.0 - nonzero.to(torch.float64) / size, nonzero, Z.abs().sum((-2, -1)))


def sparse_rate_reduction(Z: Tensor, U: Tensor, eps: float, lam: float = 0.1, *,
                          check_finite: bool = True) -> Tensor:
    """(E4) measure form, to minimise: ``μ_SRR(Z) = λ‖Z‖₀ + R^c(Z; U) − R(Z)``.

    ‖Z‖₀ counts the non-zero entries of the whole token set (no normalisation) and carries no
    gradient; as a training signal only ``R^c − R`` does.
    """
    lam = check_lam(lam)
    R = coding_rate(Z, eps, check_finite=check_finite)
    Rc = compressed_coding_rate(Z, U, eps, check_finite=False)
    return srr_from_parts(R, Rc, (Z != 0).sum((-2, -1)).to(R.dtype), lam)


def srr_from_parts(R: Tensor, Rc: Tensor, l0: Tensor, lam: float) -> Tensor:
    """(E4) ``μ_SRR = λ‖Z‖₀ + R^c − R`` from its parts (each of one shape); the one place it is assembled."""
    return lam * l0 + Rc - R


def rates_from_gram(G: Tensor, n: int, U: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(R, R^c)`` (E1, E2) of ``n`` tokens whose Gram matrix is ``G = ZᵀZ (..., d, d)``.

    Equal to ``coding_rate(Z, eps)`` and ``compressed_coding_rate(Z, U, eps)`` for the Z that
    produced G (``U_kᵀGU_k = A_kᵀA_k``); U is ``(K, d, p)``. Works on any G, e.g. one summed over
    ranks (the batch scope of ``srr.measurement``).
    """
    eps = _single_eps(eps, "rates_from_gram")
    if not isinstance(G, Tensor) or G.ndim < 2 or G.shape[-1] != G.shape[-2]:
        raise ValueError(f"G must be a square Gram matrix (..., d, d), got shape {tuple(getattr(G, 'shape', ()))}")
    n = check_int(n, "n", minimum=1, what="the number of tokens behind G")
    d = G.shape[-1]
    check_subspaces(U, d)
    K, _, p = U.shape
    out_dtype = working_dtype(G.dtype)
    with torch.autocast(G.device.type, enabled=False):
        G = G.to(accumulation_dtype(G.device))
        U = U.to(G.dtype)
        R = 0.5 * logdet_identity_plus(G, rate_scale(d, n, eps))
        G_heads = U.mT @ G.unsqueeze(-3) @ U  # (..., K, p, p) = A_kᵀA_k
        Rc = 0.5 * logdet_identity_plus(G_heads, rate_scale(p, n, eps)).sum(-1)
    return R.to(out_dtype), Rc.to(out_dtype)


def coding_rate_grad(Z: Tensor, eps: float) -> Tensor:
    """(E5) ``∇_Z R = α Z (I_d + α ZᵀZ)⁻¹ = α (I_N + α ZZᵀ)⁻¹ Z``, through the smaller system."""
    check_tokens(Z, "Z")
    eps = _single_eps(eps, "coding_rate_grad")
    N, d = Z.shape[-2:]
    alpha = rate_scale(d, N, eps)
    if d <= N:
        return alpha * solve_identity_plus(Z.mT @ Z, alpha, Z.mT).mT
    return alpha * solve_identity_plus(Z @ Z.mT, alpha, Z)


def compressed_coding_rate_grad(Z: Tensor, U: Tensor, eps, *, check_finite: bool = True) -> Tensor:
    """(E6) ``∇_Z R^c = Σ_k β A_k (I_p + β A_kᵀA_k)⁻¹ U_kᵀ`` — one p×p solve per head, no N×N matrix."""
    check_tokens(Z, "Z", check_finite=check_finite)
    check_subspaces(U, Z.shape[-1])
    K, d, p = U.shape
    N = Z.shape[-2]
    A = _project(Z, U)  # (..., K, N, p)
    beta = rate_scale(p, N, subspace_eps(eps, K, Z))
    beta_t = beta[..., None, None] if isinstance(beta, Tensor) else beta
    coeff = beta_t * solve_identity_plus(A.mT @ A, beta, A.mT).mT  # (..., K, N, p)
    return coeff.transpose(-3, -2).flatten(-2) @ U.permute(0, 2, 1).reshape(K * p, d)


def _check_membership(Pi, Z: Tensor, K: int, *, check_values: bool) -> Tensor:
    """Validate a membership ``Π (..., N, K)`` of ``Z (..., N, d)``'s tokens in K subspaces, entries in [0, 1]."""
    if not isinstance(Pi, Tensor):
        raise TypeError(f"Pi must be a torch.Tensor of shape (..., N, K), got {type(Pi).__name__}")
    N = Z.shape[-2]
    if Pi.ndim < 2 or Pi.shape[-2:] != (N, K):
        raise ValueError(f"Pi must have shape (..., N={N}, K={K}) (one weight per token and subspace), got shape "
                         f"{tuple(Pi.shape)}")
    if not Pi.is_floating_point():
        raise TypeError(f"Pi must be a floating-point tensor, got dtype {Pi.dtype}")
    if check_values and not bool(((Pi >= 0) & (Pi <= 1)).all()):
        raise ValueError(f"Pi must hold membership weights in [0, 1] (rows on the simplex), got values in "
                         f"[{float(Pi.detach().min()):.3g}, {float(Pi.detach().max()):.3g}]")
    return Pi


def _membership_statistics(A: Tensor, Pi: Tensor) -> tuple[Tensor, Tensor]:
    """``n_k = Σ_i π_ik`` ``(..., K)`` and ``m_k = Σ_i π_ik (A_k)_i² / n_k`` ``(..., K, p)`` (0 where ``n_k = 0``)."""
    Pi_k = Pi.mT  # (..., K, N)
    n = Pi_k.sum(-1)  # (..., K)
    s = (Pi_k.unsqueeze(-2) @ A.square()).squeeze(-2)  # (..., K, p)
    safe_n = torch.where(n > 0, n, torch.ones_like(n))
    return n, s / safe_n.unsqueeze(-1)


def variational_compressed_coding_rate(Z: Tensor, U: Tensor, Pi: Tensor, eps, *, per_subspace: bool = False,
                                       check_finite: bool = True) -> Tensor:
    """(E12) ``R^c_var(Z; U, Π, ε) = Σ_k (n_k/2N) Σ_j log(1 + (p/ε²) m_kj)``, ToST's variational compression.

    ``m_k = Σ_i π_ik (A_k)_i² / n_k`` (a p-vector: the membership-weighted second moment of head k),
    ``n_k = Σ_i π_ik``, ``A_k = Z U_k``; a head with ``n_k = 0`` contributes 0. ``Z (..., N, d)``,
    ``U (K, d, p)``, ``Pi (..., N, K)`` (broadcast over Z's batch) -> ``(...)``, or ``(..., K)`` with
    ``per_subspace=True``. By Hadamard's inequality it bounds R^c from above at ``Π ≡ 1``. O(N·K·p):
    no Gram matrix, no logdet. ``check_finite`` also checks ``0 ≤ Π ≤ 1``.
    """
    check_tokens(Z, "Z", check_finite=check_finite)
    check_subspaces(U, Z.shape[-1])
    K, _, p = U.shape
    N = Z.shape[-2]
    _check_membership(Pi, Z, K, check_values=check_finite)
    with torch.autocast(Z.device.type, enabled=False):
        wd = working_dtype(Z.dtype)
        eps = subspace_eps(eps, K, Z.to(wd))
        A = _project(Z.to(wd), U.to(wd))  # (..., K, N, p)
        n, m = _membership_statistics(A, Pi.to(wd))  # (..., K), (..., K, p)
        c = p / eps**2  # p/ε², one per subspace when eps is
        c_t = c[:, None] if isinstance(c, Tensor) else c
        per_head = n / (2 * N) * torch.log1p(c_t * m).sum(-1)  # (..., K)
    return per_head if per_subspace else per_head.sum(-1)


def variational_compressed_coding_rate_grad(Z: Tensor, U: Tensor, Pi: Tensor, eps) -> Tensor:
    """(E13) ``∇_Z R^c_var = β Σ_k [(π_k ⊙ A_k) ⊘ (1 + (p/ε²) m_k)] U_kᵀ``, ``β = p/(Nε²)``, with Π held fixed.

    No N×N matrix and no p×p solve: O(N·K·p) besides the projections.
    """
    check_tokens(Z, "Z")
    check_subspaces(U, Z.shape[-1])
    K, d, p = U.shape
    N = Z.shape[-2]
    _check_membership(Pi, Z, K, check_values=True)
    eps = subspace_eps(eps, K, Z)
    A = _project(Z, U)  # (..., K, N, p)
    _, m = _membership_statistics(A, Pi)  # (..., K, p)
    c = p / eps**2
    c_t = c[:, None] if isinstance(c, Tensor) else c
    beta = rate_scale(p, N, eps)
    beta_t = beta[:, None, None] if isinstance(beta, Tensor) else beta
    coeff = beta_t * Pi.mT.unsqueeze(-1) * A / (1 + c_t * m).unsqueeze(-2)  # (..., K, N, p)
    return coeff.transpose(-3, -2).flatten(-2) @ U.permute(0, 2, 1).reshape(K * p, d)


def crate_vis_compressed_coding_rate(Z: Tensor, U: Tensor, eps_squared: float = 0.01) -> Tensor:
    """R^c in the public CRATE visualisation code's convention — **not** ``compressed_coding_rate``.

    That code passes ε² under the name ``eps`` (``p/(N·eps)``; eps=0.01 means ε=0.1) and
    normalises each head's projected tokens ``A_k`` to unit ℓ2 norm per token before the logdet.
    Here the argument is named for what it is: ``eps_squared``.
    """
    check_tokens(Z, "Z")
    check_subspaces(U, Z.shape[-1])
    eps = check_eps(eps_squared, "eps_squared") ** 0.5
    K, _, p = U.shape
    N = Z.shape[-2]
    A = torch.nn.functional.normalize(_project(_promote(Z), U.to(working_dtype(Z.dtype))), dim=-1)
    return (0.5 * logdet_identity_plus(gram(A), rate_scale(p, N, eps))).sum(-1).to(A.dtype)


def spectral_norm_squared(M: Tensor) -> float:
    """``‖M‖₂²`` of a matrix, in float64, without gradient: the Lipschitz constant of ``½‖X − ZMᵀ‖²`` (E11)."""
    if not isinstance(M, Tensor) or M.ndim != 2:
        raise ValueError(f"D must be a dictionary matrix of shape (d, m), got {getattr(M, 'shape', type(M).__name__)}")
    with torch.no_grad():
        return float(torch.linalg.matrix_norm(M.detach().double(), ord=2)) ** 2


def compression_lipschitz(U: Tensor, eps, N: int) -> float:
    """(E7) ``L(∇R^c) ≤ ‖[√β_k U_k]_k‖₂²``, ``β_k = p/(N ε_k²)``; ``U (K, d, p)``, ``eps`` one or K values.

    At most MATH's ``β Σ_k ‖U_k‖₂²`` and attained near ``Z = 0`` (where ``R^c ≈ ½ Σ_k β_k ‖Z U_k‖²``):
    for mutually orthogonal orthonormal blocks it is ``β``, not ``Kβ``. A float, computed without gradient.
    """
    if not isinstance(U, Tensor) or U.ndim != 3:
        raise ValueError(f"U must be subspaces of shape (K, d, p), got {getattr(U, 'shape', type(U).__name__)}")
    check_subspaces(U, U.shape[1])
    K, d, p = U.shape
    eps = subspace_eps(eps, K)
    eps_k = eps.to(torch.float64) if isinstance(eps, Tensor) else torch.full((K,), eps, dtype=torch.float64)
    beta = rate_scale(p, N, eps_k.to(U.device))  # (K,)
    with torch.no_grad():
        scaled = U.detach().double() * beta.sqrt()[:, None, None]  # (K, d, p)
        return spectral_norm_squared(scaled.permute(1, 0, 2).reshape(d, K * p))
