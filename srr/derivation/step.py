"""``derive_step``: one proximal-gradient step on an objective, by automatic differentiation.

    Z⁺ = prox_{κ g}(Z − κ ∇_Z f(Z; params))

with ``f`` the objective's smooth part (differentiated with ``torch.func.grad``) and ``g`` its
non-smooth part (applied through its closed-form proximal operator, ``Objective.prox``). With no
non-smooth part this is a plain gradient step; e.g. on ``CompressedCodingRate`` it is
``Z − κ ∇R^c(Z; U)`` (MATH.md E6), on ``LeastSquares + L1 + NonNegative`` started at ``X = Z`` it
is the ISTA step (E10).

Batching is by leading dimensions: the smooth part is summed over the batch before ``grad``; token
sets are independent, so the gradient of the sum is the per-set gradient. The step is a pure
function of its inputs and composes with autograd: training through it differentiates the
gradient (second order).

A causal term (E14, E16) moves each token in its own prefix's rate only: the gradient is taken in the
tokens with the prefixes held at the input (``term(z, context=Z)``, differentiated in ``z`` alone), so
training through the step still differentiates through the prefixes; its step size is per position.
"""
from __future__ import annotations

import warnings

import math
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor

from srr._checks import check_positive
from srr.derivation.lipschitz import BoundFraction, is_causal
from srr.objective import Objective, Term

StepSize = Union[float, Tensor, str, BoundFraction, Callable[..., Union[float, Tensor]]]


def _check_step_size(step_size) -> StepSize:
    if isinstance(step_size, str):
        if step_size != "auto":
            raise ValueError(f"step_size must be a number > 0, 'auto', or a function (Z, **params) -> number, got "
                             f"{step_size!r}")
        return BoundFraction(1.0)
    if isinstance(step_size, bool):
        raise TypeError(f"step_size must be a number > 0, 'auto', or a function, got bool {step_size!r}")
    if isinstance(step_size, (int, float)):
        return check_positive(step_size, "step_size")
    if isinstance(step_size, Tensor):
        if step_size.numel() != 1:
            raise ValueError(f"step_size given as a tensor must hold one value, got shape {tuple(step_size.shape)}")
        return step_size
    if callable(step_size):
        return step_size
    raise TypeError(f"step_size must be a number > 0, 'auto', or a function (Z, **params) -> number, got "
                    f"{type(step_size).__name__}")


@dataclass(frozen=True, eq=False)
class Step:
    """``step(Z, **params) -> Z⁺``: one proximal-gradient step on ``objective`` (see module docstring).

    ``step_size``: a number κ; a one-element tensor (e.g. a learnable parameter); ``"auto"`` (``1/L``
    from the Lipschitz bounds E7/E11, recomputed at every call); a :class:`BoundFraction`; or a
    function ``(Z, **params) -> κ``.
    """

    objective: Objective
    step_size: StepSize

    def __call__(self, Z: Tensor, **params) -> Tensor:
        return self.apply(Z, params)

    @property
    def smooth_part(self) -> Objective:
        """The objective's smooth terms (the gradient step's); ``Term.smooth`` is the bool that picks them."""
        return self.objective.smooth_part()

    @property
    def smooth(self) -> Objective:
        """Deprecated name of :attr:`smooth_part` (``Term.smooth`` is a bool; this is an objective)."""
        warnings.warn("Step.smooth is an objective; use Step.smooth_part", DeprecationWarning, stacklevel=2)
        return self.smooth_part

    @property
    def nonsmooth(self) -> Objective:
        return self.objective.nonsmooth_part()

    def resolve_step_size(self, Z: Tensor, params: dict) -> float | Tensor:
        """κ for token sets ``Z`` under ``params``."""
        s = self.step_size
        if isinstance(s, BoundFraction):
            return s(self.objective, Z, **params)
        if callable(s) and not isinstance(s, Tensor):
            return s(Z, **params)
        return s

    def gradient(self, Z: Tensor, **params) -> Tensor:
        """``∇_Z f(Z; params)`` of the smooth part, one gradient per token set, shape of ``Z``."""
        smooth = self.smooth_part
        if not smooth.terms:
            return torch.zeros_like(Z)
        used = {n: params[n] for n in smooth.requires}
        if not is_causal(smooth):
            return torch.func.grad(lambda z: smooth(z, **used).sum())(Z)

        def causal_value(z: Tensor) -> Tensor:  # the prefixes are Z's, a constant to this grad (E14's sg)
            total = 0.0
            for c, t in smooth.terms:
                kwargs = {n: used[n] for n in t.requires}
                total = total + c * (t(z, **kwargs, context=Z) if getattr(t, "causal", False) else t(z, **kwargs))
            return total.sum()

        return torch.func.grad(causal_value)(Z)

    @property
    def linear_at_signal(self) -> bool:
        """Whether the gradient step from ``Z = X`` is a linear map ``X ↦ X M`` of the tokens: every
        smooth term is a token-wise quadratic form (``Term.tokenwise_quadratic``), e.g. the ISTA step's
        ``½‖X − ZDᵀ‖²`` (E10) or an elastic net's ``½‖X − ZDᵀ‖² + (μ/2)‖Z‖²``."""
        terms = self.smooth_part.terms
        return bool(terms) and all(t.tokenwise_quadratic for _, t in terms)

    def step_matrix(self, params: dict, step_size, like: Tensor) -> Tensor:
        """``M (d, d)`` with ``X − κ∇_Z f(X; X, …) = X M`` for every ``X (..., N, d)``, when
        :attr:`linear_at_signal`: row j is the step of the basis token ``e_j`` (``Z = X = I_d``), so the
        same ``torch.func.grad`` forms it from the weights alone (``2d³`` multiply-adds for the
        ISTA step's ``I − κ(DᵀD − D)``) and the tokens meet one matrix instead of two (E10')."""
        E = torch.eye(like.shape[-1], dtype=like.dtype, device=like.device)
        basis = {n: (E if n == "X" else v) for n, v in params.items()}
        return E - step_size * self.gradient(E, **basis)

    def _fuses(self, Z: Tensor, params: dict) -> bool:
        """Whether the step from ``Z = X`` runs as ``Z M``: linear, and ``Z`` has T > 2d tokens (forming ``M``
        costs 2d³ multiply-adds and saves one token-wise product, T·d²)."""
        d = Z.shape[-1]
        return self.linear_at_signal and ("X" not in params or params["X"] is Z) and Z.numel() > 2 * d * d

    def apply(self, Z: Tensor, params: dict, *, step_size=None, prox_scale=None, at_signal: bool = False) -> Tensor:
        """The step with the step size overridden (``step_size``) and the non-smooth part's weight
        multiplied by ``prox_scale`` (a learnable λ: ``prox_{κ·ρg} = g.prox(·, κρ)``). ``at_signal``: ``Z``
        is the signal ``X`` itself (a derived layer's first step from its input); a step that is then
        linear (:attr:`linear_at_signal`) runs as ``Z M`` (:meth:`step_matrix`) where that saves work."""
        self._check_params(params)
        kappa = self.resolve_step_size(Z, params) if step_size is None else step_size
        if not torch.compiler.is_compiling() and isinstance(kappa, float) and not math.isfinite(kappa):
            raise ValueError(f"step_size resolved to {kappa} for {self.objective}: "
                             f"'auto' needs a smooth part with a bound")
        if at_signal and self._fuses(Z, params):
            V = Z @ self.step_matrix(params, kappa, Z)  # (..., N, d)
        else:
            V = Z - kappa * self.gradient(Z, **params) if self.smooth_part.terms else Z  # (..., N, d)
        if not self.nonsmooth.terms:
            return V
        return self.objective.prox(V, kappa if prox_scale is None else kappa * prox_scale)

    def _check_params(self, params: dict) -> None:
        needed = self.objective.requires
        unknown = sorted(set(params) - set(needed))
        missing = [n for n in needed if n not in params]
        if unknown or missing:
            given = ", ".join(f"{n}=..." for n in needed)
            raise TypeError(f"the step on {self.objective} takes parameters {list(needed)} (call step(Z, {given})); "
                            f"missing {missing}, unexpected {unknown}")


def derive_step(objective: Term | Objective, step_size: StepSize) -> Step:
    """A pure function ``step(Z, **params) -> Z⁺``: a gradient step of size ``step_size`` on the
    smooth part of ``objective`` (``torch.func.grad``), then the proximal operator of its non-smooth
    part. ``params`` are the objective's (``objective.requires``), e.g. ``U`` for ``R^c``, ``X, D``
    for ``LeastSquares``.

    >>> step = derive_step(CompressedCodingRate(eps=0.5), step_size=0.1)
    >>> Z_next = step(Z, U=U)          # Z − 0.1 ∇_Z R^c(Z; U)            (E6)
    >>> ista = derive_step(LeastSquares() + L1(lam=0.1) + NonNegative(), step_size=0.1)
    >>> Z_next = ista(X, X=X, D=D)     # ReLU(X + 0.1 (X − X Dᵀ) D − 0.01)  (E10)
    >>> causal = derive_step(CausalCompressedCodingRate(eps=0.5), step_size="auto")
    >>> Z_next = causal(Z, U=U)        # z_t − κ_t ∇_{z_t} R^c(Z_{≤t}), prefix held, κ_t = 1/L_t  (E14)
    """
    objective = Objective.of(objective)
    if not objective.terms:
        raise ValueError("objective must have at least one term, got the empty objective 0")
    step_size = _check_step_size(step_size)
    objective.prox(torch.zeros(1, 1), 1.0)  # raises now, not at the first call, if no prox is known
    return Step(objective, step_size)
