"""Objectives of the derived layers: the CRATE pair and variants from modified objectives.

Each function returns an :class:`~srr.objective.Objective`; ``derive(objective, step_size, dim=...)``
turns it into a layer. The variants are one-line changes of the objective, not new code:

| name | objective (minimised) | step it derives |
| --- | --- | --- |
| ``mssa_exact`` | ``R^c(Z; U)`` | ``Z − κ∇R^c`` (E6): the exact compression step ("MSSA-exact") |
| ``ista`` | ``½‖X − ZDᵀ‖² + λ‖Z‖₁ + ι≥0`` from ``Z = X`` | (E10): CRATE's sparsification |
| ``soft_threshold_ista`` | ``½‖X − ZDᵀ‖² + λ‖Z‖₁`` | (E10) with soft thresholding, signed codes |
| ``elastic_net_ista`` | ``½‖X − ZDᵀ‖² + (μ/2)‖Z‖² + λ‖Z‖₁ + ι≥0`` | (E10) with a shrinkage ``−κμZ`` |
| ``per_head_compression`` | ``R^c`` with one ε per subspace | (E6) with ``β_k = p/(Nε_k²)`` |
| ``expansion`` | ``−R(Z)`` | ``Z + κ∇R`` (E5): coding-rate expansion |
| ``rate_reduction`` | ``R^c − R = −ΔR`` (E3) | compress within subspaces and expand overall |
"""
from __future__ import annotations

from srr.objective import (CodingRate, CompressedCodingRate, L1, LeastSquares, NonNegative, Objective,
                           SquaredL2)


def mssa_exact(eps: float = 0.5) -> Objective:
    return Objective.of(CompressedCodingRate(eps=eps))


def ista(lam: float = 0.1) -> Objective:
    return LeastSquares() + L1(lam=lam) + NonNegative()


def soft_threshold_ista(lam: float = 0.1) -> Objective:
    return LeastSquares() + L1(lam=lam)


def elastic_net_ista(lam: float = 0.1, l2: float = 0.1) -> Objective:
    return LeastSquares() + SquaredL2(lam=l2) + L1(lam=lam) + NonNegative()


def per_head_compression(eps) -> Objective:
    return Objective.of(CompressedCodingRate(eps=tuple(float(e) for e in eps)))


def expansion(eps: float = 0.5) -> Objective:
    return -CodingRate(eps=eps)


def rate_reduction(eps: float = 0.5) -> Objective:
    return CompressedCodingRate(eps=eps) - CodingRate(eps=eps)


VARIANTS = {
    "mssa_exact": mssa_exact, "ista": ista, "soft_threshold_ista": soft_threshold_ista,
    "elastic_net_ista": elastic_net_ista, "per_head_compression": per_head_compression,
    "expansion": expansion, "rate_reduction": rate_reduction,
}
