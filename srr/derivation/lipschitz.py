"""Step sizes from Lipschitz bounds of the smooth part's gradient (MATH.md E7, E11).

A gradient (or proximal-gradient) step with ``0 < step ≤ 1/L`` on an objective whose gradient is
``L``-Lipschitz never increases it (descent lemma); these helpers return ``1/L``.

- (E7) ``R^c``: the Hessian of ``½ logdet(I + β AᵀA)`` in ``A`` has norm ≤ β, so with ``A_k = Z U_k``
  the Hessian of ``R^c`` in ``Z`` is bounded by ``‖[√β_1 U_1, …, √β_K U_K]‖₂²``. That is at most
  MATH's ``β Σ_k ‖U_k‖₂²`` and is attained near ``Z = 0`` (where ``R^c ≈ ½ Σ_k β_k ‖Z U_k‖²``), so
  it is the bound that matters: for mutually orthogonal orthonormal blocks it is ``β``, not ``Kβ``.
- (E5) ``R``: the same argument with ``U = I``: ``L ≤ α = d/(Nε²)``.
- (E11) ``½‖X − Z Dᵀ‖²``: ``L = ‖D‖₂²``; ``(λ/2)‖Z‖²``: ``L = λ``.

The bounds are computed without gradient (a step size is a hyper-parameter of the step, not a
function to train through) and returned as Python floats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from srr._checks import check_eps, check_subspaces
from srr.objective import CodingRate, CompressedCodingRate, LeastSquares, Objective, SquaredL2


def _spectral_norm_squared(M: Tensor) -> float:
    """``‖M‖₂²`` of a matrix, in float64."""
    with torch.no_grad():
        return float(torch.linalg.matrix_norm(M.detach().double(), ord=2)) ** 2


def compression_lipschitz(U: Tensor, eps, N: int) -> float:
    """(E7) ``L(∇R^c) ≤ ‖[√β_k U_k]_k‖₂²``, ``β_k = p/(N ε_k²)``; ``U (K, d, p)``, ``eps`` one or K values."""
    if not isinstance(U, Tensor) or U.ndim != 3:
        raise ValueError(f"U must be subspaces of shape (K, d, p), got {getattr(U, 'shape', type(U).__name__)}")
    check_subspaces(U, U.shape[1])
    eps = check_eps(eps)
    K, d, p = U.shape
    eps_k = eps.to(torch.float64) if isinstance(eps, Tensor) else torch.full((K,), eps, dtype=torch.float64)
    if eps_k.shape != (K,):
        raise ValueError(f"eps given per subspace must have shape ({K},) to match U's K={K}, got {tuple(eps_k.shape)}")
    beta = p / (N * eps_k.to(U.device) ** 2)  # (K,)
    scaled = U.detach().double() * beta.sqrt()[:, None, None]  # (K, d, p)
    return _spectral_norm_squared(scaled.permute(1, 0, 2).reshape(d, K * p))


def compression_step_size(U: Tensor, eps, N: int) -> float:
    """(E7) ``1/L`` for a gradient step on ``R^c(Z; U, ε)`` with ``N`` tokens: it never increases ``R^c``."""
    return 1.0 / compression_lipschitz(U, eps, N)


def coding_rate_step_size(d: int, eps: float, N: int) -> float:
    """(E5) ``1/α = Nε²/d`` for a gradient step on ``R(Z; ε)`` (or on ``−R``: an expansion step)."""
    eps = check_eps(eps)
    return N * eps**2 / d


def ista_step_size(D: Tensor) -> float:
    """(E11) ``1/‖D‖₂²``: a proximal step on ``½‖x − Da‖² + λ‖a‖₁ (+ ι(a ≥ 0))`` never increases it."""
    if not isinstance(D, Tensor) or D.ndim != 2:
        raise ValueError(f"D must be a dictionary matrix of shape (d, m), got {getattr(D, 'shape', type(D).__name__)}")
    return 1.0 / _spectral_norm_squared(D)


def lipschitz_bound(objective, Z: Tensor, **params) -> float:
    """A Lipschitz constant of the gradient of ``objective``'s smooth part at token sets like ``Z``.

    ``Σ_i |c_i| L(f_i)`` over the smooth terms (the bound holds for ``−f`` as for ``f``); ``Z`` only
    supplies ``N`` and ``d``. Raises for a smooth term with no known bound.
    """
    total = 0.0
    N, d = Z.shape[-2:]
    for c, term in Objective.of(objective).smooth_part().terms:
        if isinstance(term, CompressedCodingRate):
            eps = torch.tensor(term.eps, dtype=torch.float64) if isinstance(term.eps, tuple) else term.eps
            L = compression_lipschitz(params["U"], eps, N)
        elif isinstance(term, CodingRate):
            L = d / (N * term.eps**2)
        elif isinstance(term, LeastSquares):
            L = _spectral_norm_squared(params["D"])
        elif isinstance(term, SquaredL2):
            L = term.lam
        else:
            raise ValueError(f"no Lipschitz bound is known for term {term}; pass step_size as a number or a function")
        total += abs(c) * L
    return total


def auto_step_size(objective, Z: Tensor, **params) -> float:
    """``1/L`` with ``L = lipschitz_bound(objective, Z, **params)`` (``inf`` if the smooth part is empty)."""
    L = lipschitz_bound(objective, Z, **params)
    return math.inf if L == 0 else 1.0 / L


@dataclass(frozen=True)
class BoundFraction:
    """The step size ``fraction / L`` (``L`` from :func:`lipschitz_bound`), recomputed at every call.

    ``step_size="auto"`` means ``BoundFraction(1.0)``; ``BoundFraction(0.5)`` steps at half the
    bound, ``BoundFraction(4.0)`` far above it (where descent fails, see ``tests/test_derive.py``).
    """

    fraction: float = 1.0

    def __post_init__(self):
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0:
            raise ValueError(f"fraction must be a finite number > 0, got {f!r}")

    def __call__(self, objective, Z: Tensor, **params) -> float:
        return self.fraction * auto_step_size(objective, Z, **params)
