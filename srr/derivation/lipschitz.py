"""Step sizes from Lipschitz bounds of the smooth part's gradient (MATH.md E7, E11).

A gradient (or proximal-gradient) step with ``0 < step ≤ 1/L`` on an objective whose gradient is
``L``-Lipschitz never increases it (descent lemma); these helpers return ``1/L``.

- (E7) ``R^c``: the Hessian of ``½ logdet(I + β AᵀA)`` in ``A`` has norm ≤ β, so with ``A_k = Z U_k``
  the Hessian of ``R^c`` in ``Z`` is bounded by ``‖[√β_1 U_1, …, √β_K U_K]‖₂²``. That is at most
  MATH's ``β Σ_k ‖U_k‖₂²`` and is attained near ``Z = 0`` (where ``R^c ≈ ½ Σ_k β_k ‖Z U_k‖²``), so
  it is the bound that matters: for mutually orthogonal orthonormal blocks it is ``β``, not ``Kβ``.
- (E5) ``R``: the same argument with ``U = I``: ``L ≤ α = d/(Nε²)``.
- (E11) ``½‖X − Z Dᵀ‖²``: ``L = ‖D‖₂²``; ``(λ/2)‖Z‖²``: ``L = λ``.
- (E14, E16) causal terms: one bound per position, ``L_t = β_t ‖[U_k]_k‖₂²`` with ``β_t = p/(tε²)``; an
  objective with a causal term steps each position with its own ``κ_t = 1/L_t`` (a ``(T, 1)`` tensor).

The bounds are computed without gradient (a step size is a hyper-parameter of the step, not a
function to train through) and returned as Python floats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from srr._checks import check_eps, check_number
from srr.objective import Objective
from srr.rates import compression_lipschitz, rate_scale, spectral_norm_squared

__all__ = ["BoundFraction", "auto_step_size", "coding_rate_step_size", "compression_lipschitz",
           "compression_step_size", "ista_step_size", "lipschitz_bound", "position_lipschitz_bound", "is_causal"]


def compression_step_size(U: Tensor, eps, N: int) -> float:
    """(E7) ``1/L`` for a gradient step on ``R^c(Z; U, ε)`` with ``N`` tokens: it never increases ``R^c``."""
    return 1.0 / compression_lipschitz(U, eps, N)


def coding_rate_step_size(d: int, eps: float, N: int) -> float:
    """(E5) ``1/α = Nε²/d`` for a gradient step on ``R(Z; ε)`` (or on ``−R``: an expansion step)."""
    return 1.0 / rate_scale(d, N, check_eps(eps))


def ista_step_size(D: Tensor) -> float:
    """(E11) ``1/‖D‖₂²``: a proximal step on ``½‖x − Da‖² + λ‖a‖₁ (+ ι(a ≥ 0))`` never increases it."""
    return 1.0 / spectral_norm_squared(D)


def lipschitz_bound(objective, Z: Tensor, **params) -> float:
    """A Lipschitz constant of the gradient of ``objective``'s smooth part at token sets like ``Z``.

    ``Σ_i |c_i| L(f_i)`` over the smooth terms (the bound holds for ``−f`` as for ``f``); ``Z`` only
    supplies ``N`` and ``d``. Each term brings its own bound (``Term.lipschitz``); raises for a smooth
    term with none.
    """
    N, d = Z.shape[-2:]
    total = 0.0
    for c, term in Objective.of(objective).smooth_part().terms:
        total += abs(c) * term.lipschitz(N, d, **{n: params[n] for n in term.requires if n in params})
    return total


def is_causal(objective) -> bool:
    """Whether the smooth part has a causal term (E14, E16): its gradient and step size are per position."""
    return any(getattr(t, "causal", False) for _, t in Objective.of(objective).smooth_part().terms)


def position_lipschitz_bound(objective, Z: Tensor, **params) -> Tensor:
    """``L_t`` for each of ``Z``'s ``T`` positions, ``(T,)``: ``Σ_i |c_i| L_t(f_i)``, a causal term's own
    per-position bound (E14, E16), any other term's single bound at every position."""
    T, d = Z.shape[-2:]
    total = torch.zeros(T, dtype=torch.float64)
    for c, term in Objective.of(objective).smooth_part().terms:
        used = {n: params[n] for n in term.requires if n in params}
        if getattr(term, "causal", False):
            bound = term.lipschitz_per_position(T, d, **used)
            total = total.to(bound) + abs(c) * bound
        else:
            total = total + abs(c) * term.lipschitz(T, d, **used)
    return total


def auto_step_size(objective, Z: Tensor, **params) -> float | Tensor:
    """``1/L`` with ``L = lipschitz_bound(objective, Z, **params)`` (``inf`` if the smooth part is empty).

    With a causal term (E14, E16) one step size per position, ``κ_t = 1/L_t``, as a ``(T, 1)`` tensor in
    ``Z``'s dtype that broadcasts over the features. Under ``torch.compile`` a bound computed from
    parameters (E7, E11) is traced, not a number: no branch on it (``1/L`` is then ``inf`` for ``L = 0``
    as well)."""
    if not Objective.of(objective).smooth_part().terms:
        return math.inf
    if is_causal(objective):
        L = position_lipschitz_bound(objective, Z, **params)
        return (1.0 / L).to(dtype=Z.dtype, device=Z.device).unsqueeze(-1)  # (T, 1)
    L = lipschitz_bound(objective, Z, **params)
    if torch.compiler.is_compiling():
        return 1.0 / L
    return math.inf if L == 0 else 1.0 / L


@dataclass(frozen=True)
class BoundFraction:
    """The step size ``fraction / L`` (``L`` from :func:`lipschitz_bound`), recomputed at every call.

    ``step_size="auto"`` means ``BoundFraction(1.0)``; ``BoundFraction(0.5)`` steps at half the
    bound, ``BoundFraction(4.0)`` far above it (where descent fails, see ``tests/test_derive.py``).
    """

    fraction: float = 1.0

    def __post_init__(self):
        check_number(self.fraction, "fraction", low=0.0, low_open=True)

    def __call__(self, objective, Z: Tensor, **params) -> float:
        return self.fraction * auto_step_size(objective, Z, **params)
