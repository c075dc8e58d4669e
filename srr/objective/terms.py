"""The concrete terms of sparse rate reduction (MATH.md E1, E2, E4, E10) and ToST's variational compression (E12).

Each is a frozen dataclass, final, evaluated as ``term(Z, **params) -> (...)`` on token sets
``Z (..., N, d)``; ``eps`` is ε (never ε²); penalties sum over all N·d entries of a token set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from srr._checks import check_eps, check_lam
from srr.objective.base import NonNegative, SeparablePenalty, Term, _number, _spec_value
from srr.rates import (coding_rate, compressed_coding_rate, compression_lipschitz, rate_scale, spectral_norm_squared,
                       variational_compressed_coding_rate)

__all__ = ["CodingRate", "CompressedCodingRate", "VariationalCompressedCodingRate", "LeastSquares", "SquaredL2", "L1",
           "L0", "NonNegative"]


def _eps_text(eps) -> str:
    return _spec_value(eps)


@dataclass(frozen=True)
class CodingRate(Term):
    """(E1) ``R(Z; ε) = ½ logdet(I_d + d/(Nε²) ZᵀZ)``."""

    eps: float = 0.5
    symbol: ClassVar[str] = "R"

    def __post_init__(self):
        check_eps(self.eps)

    def __call__(self, Z: Tensor) -> Tensor:
        return coding_rate(Z, self.eps)

    def lipschitz(self, N: int, d: int, **params) -> float:
        """(E5) ``α = d/(Nε²)``."""
        return rate_scale(d, N, self.eps)

    def __str__(self) -> str:
        return f"R(Z; ε={_eps_text(self.eps)})"

    def latex(self) -> str:
        return rf"R(\mathbf{{Z}};\,\epsilon={_eps_text(self.eps)})"


@dataclass(frozen=True)
class CompressedCodingRate(Term):
    """(E2) ``R^c(Z; U, ε) = Σ_k ½ logdet(I_p + p/(Nε²) (ZU_k)ᵀ(ZU_k))``; ``U (K, d, p)`` at evaluation.

    ``eps`` may be a tuple with one ε per subspace.
    """

    eps: float | tuple[float, ...] = 0.5
    symbol: ClassVar[str] = "Rc"
    requires: ClassVar[tuple[str, ...]] = ("U",)

    def __post_init__(self):
        if isinstance(self.eps, list):
            object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        check_eps(self.eps)

    def __call__(self, Z: Tensor, U: Tensor) -> Tensor:
        return compressed_coding_rate(Z, U, self.eps)

    def lipschitz(self, N: int, d: int, *, U: Tensor, **params) -> float:
        """(E7) ``‖[√β_k U_k]_k‖₂²``."""
        return compression_lipschitz(U, self.eps, N)

    def __str__(self) -> str:
        return f"R^c(Z; U, ε={_eps_text(self.eps)})"

    def latex(self) -> str:
        return rf"R^c(\mathbf{{Z}};\,\mathbf{{U}},\,\epsilon={_eps_text(self.eps)})"


@dataclass(frozen=True)
class VariationalCompressedCodingRate(Term):
    """(E12) ``R^c_var(Z; U, Π, ε) = Σ_k (n_k/2N) Σ_j log(1 + (p/ε²) m_kj)``, ``m_k = Σ_i π_ik (ZU_k)_i² / n_k``.

    ToST's variational (Hadamard, diagonal) form of the membership-weighted compression term; ``U (K, d, p)``
    and a membership ``Pi (..., N, K)`` (entries in [0, 1]) at evaluation. Its gradient with Π held fixed
    (E13) is Token Statistics Self-Attention. ``eps`` may be a tuple with one ε per subspace.
    """

    eps: float | tuple[float, ...] = 0.5
    symbol: ClassVar[str] = "RcVar"
    requires: ClassVar[tuple[str, ...]] = ("U", "Pi")

    def __post_init__(self):
        if isinstance(self.eps, list):
            object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        check_eps(self.eps)

    def __call__(self, Z: Tensor, U: Tensor, Pi: Tensor) -> Tensor:
        return variational_compressed_coding_rate(Z, U, Pi, self.eps)

    def lipschitz(self, N: int, d: int, *, U: Tensor, **params) -> float:
        """(E7)'s bound ``‖[√β_k U_k]_k‖₂²`` holds for any fixed Π in [0, 1]: per head and coordinate the
        Hessian in ``A_k`` lies between ``−β/2`` and ``β`` (docs/math.md, E13)."""
        return compression_lipschitz(U, self.eps, N)

    def __str__(self) -> str:
        return f"R^c_var(Z; U, Π, ε={_eps_text(self.eps)})"

    def latex(self) -> str:
        return (rf"R^c_{{\mathrm{{var}}}}(\mathbf{{Z}};\,\mathbf{{U}},\,\boldsymbol{{\Pi}},\,"
                rf"\epsilon={_eps_text(self.eps)})")


@dataclass(frozen=True)
class LeastSquares(Term):
    """Sparse-coding fidelity ``½‖X − Z Dᵀ‖²_F`` of codes ``Z (..., N, m)`` against a dictionary
    ``D (d, m)`` and signals ``X (..., N, d)`` passed at evaluation (the ISTA problem of E10)."""

    symbol: ClassVar[str] = "LeastSquares"
    requires: ClassVar[tuple[str, ...]] = ("X", "D")
    tokenwise_quadratic: ClassVar[bool] = True

    def __call__(self, Z: Tensor, X: Tensor, D: Tensor) -> Tensor:
        if D.ndim != 2 or D.shape[-1] != Z.shape[-1] or D.shape[0] != X.shape[-1]:
            raise ValueError(f"D must have shape (d={X.shape[-1]}, m={Z.shape[-1]}) to map codes to signals, got "
                             f"{tuple(D.shape)}")
        residual = X - Z @ D.mT  # (..., N, d)
        return 0.5 * residual.pow(2).sum((-2, -1))

    def lipschitz(self, N: int, d: int, *, D: Tensor, **params) -> float:
        """(E11) ``‖D‖₂²``."""
        return spectral_norm_squared(D)

    def __str__(self) -> str:
        return "½‖X − Z Dᵀ‖²"

    def latex(self) -> str:
        return r"\tfrac12\|\mathbf{X} - \mathbf{Z}\mathbf{D}^\top\|_F^2"


@dataclass(frozen=True)
class SquaredL2(Term):
    """``(λ/2)‖Z‖²_F``: the smooth half of an elastic net."""

    lam: float = 1.0
    symbol: ClassVar[str] = "L2"
    tokenwise_quadratic: ClassVar[bool] = True

    def __post_init__(self):
        check_lam(self.lam)

    def __call__(self, Z: Tensor) -> Tensor:
        return 0.5 * self.lam * Z.pow(2).sum((-2, -1))

    def lipschitz(self, N: int, d: int, **params) -> float:
        return self.lam

    def __str__(self) -> str:
        return "½‖Z‖²" if self.lam == 1 else f"{_number(self.lam)}·½‖Z‖²"

    def latex(self) -> str:
        return r"\tfrac12\|\mathbf{Z}\|_F^2" if self.lam == 1 else rf"{_number(self.lam)}\,\tfrac12\|\mathbf{{Z}}\|_F^2"


@dataclass(frozen=True)
class L1(SeparablePenalty):
    """``λ‖Z‖₁``; prox is soft thresholding at ``step·λ``."""

    lam: float = 1.0
    symbol: ClassVar[str] = "L1"

    def __post_init__(self):
        check_lam(self.lam)

    def __call__(self, Z: Tensor) -> Tensor:
        return self.lam * Z.abs().sum((-2, -1))

    def prox(self, V: Tensor, step) -> Tensor:
        return torch.sign(V) * torch.relu(V.abs() - step * self.lam)

    def __str__(self) -> str:
        return "‖Z‖₁" if self.lam == 1 else f"{_number(self.lam)}·‖Z‖₁"

    def latex(self) -> str:
        return r"\|\mathbf{Z}\|_1" if self.lam == 1 else rf"{_number(self.lam)}\,\|\mathbf{{Z}}\|_1"


@dataclass(frozen=True)
class L0(SeparablePenalty):
    """``λ‖Z‖₀`` (E4): a count, for measurement — it has no gradient. Its prox is hard
    thresholding at ``sqrt(2·step·λ)``."""

    lam: float = 1.0
    symbol: ClassVar[str] = "L0"

    def __post_init__(self):
        check_lam(self.lam)

    def __call__(self, Z: Tensor) -> Tensor:
        return self.lam * (Z != 0).sum((-2, -1)).to(Z.dtype)

    def prox(self, V: Tensor, step) -> Tensor:
        threshold = torch.sqrt(torch.as_tensor(2 * step * self.lam, dtype=V.dtype, device=V.device))
        return torch.where(V.abs() > threshold, V, torch.zeros_like(V))

    def __str__(self) -> str:
        return "‖Z‖₀" if self.lam == 1 else f"{_number(self.lam)}·‖Z‖₀"

    def latex(self) -> str:
        return r"\|\mathbf{Z}\|_0" if self.lam == 1 else rf"{_number(self.lam)}\,\|\mathbf{{Z}}\|_0"
