"""Objective terms as small immutable values, and their weighted sums.

A ``Term`` is a frozen dataclass: ``term(Z, **params) -> (...)`` evaluates it on token sets
``Z (..., N, d)``. Terms combine with ``+``, ``-`` and scalar ``*`` into an ``Objective`` (a tuple
of ``(coefficient, term)`` pairs), which evaluates, prints as math (``str``, ``latex()``), prints
as a parseable expression (``spec()``, read back by ``srr.objective.parse``), and splits into a
smooth part (differentiated by ``srr.derive``, stepped by ``Term.lipschitz``) and a non-smooth part (applied through its
proximal operator).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from srr._checks import check_tokens


def _number(c: float) -> str:
    """Shortest text that reads back as exactly ``c``."""
    return repr(float(c)) if c != int(c) or abs(c) >= 1e16 else str(int(c))


class Term(abc.ABC):
    """One term ``f(Z; params)`` of an objective. Subclasses are frozen dataclasses."""

    smooth: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ()  # names of the parameters passed at evaluation
    symbol: ClassVar[str]  # name used by spec() and parse()
    # a sum over tokens of a quadratic form of each token (Z_i, X_i), homogeneous of degree 2 (no
    # linear or constant part): its gradient in Z is linear in (Z, X), token by token
    tokenwise_quadratic: ClassVar[bool] = False

    @abc.abstractmethod
    def __call__(self, Z: Tensor, **params) -> Tensor:
        """Value per token set, shape ``(...)``."""

    @abc.abstractmethod
    def __str__(self) -> str: ...

    @abc.abstractmethod
    def latex(self) -> str: ...

    def lipschitz(self, N: int, d: int, **params) -> float:
        """A Lipschitz constant of ``∇_Z f`` on token sets of ``N`` tokens of width ``d`` (a smooth term's
        bound, MATH.md E5, E7, E11), given the term's parameters; used for ``step_size="auto"``."""
        raise ValueError(f"no Lipschitz bound is known for term {self}; pass step_size as a number or a function")

    def spec(self) -> str:
        """Parseable form, e.g. ``Rc(eps=0.5)``: the symbol, ε, and every other non-default field."""
        args = [f"{k}={_spec_value(v)}" for k, v in self._fields().items() if k == "eps" or v != self._default(k)]
        return f"{self.symbol}({', '.join(args)})" if args else self.symbol

    def _fields(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def _default(self, name):
        return self.__dataclass_fields__[name].default

    # arithmetic: every combination is an Objective
    def __add__(self, other):
        return Objective.of(self) + other

    def __radd__(self, other):
        return Objective.of(self).__radd__(other)

    def __sub__(self, other):
        return Objective.of(self) - other

    def __mul__(self, c):
        return Objective.of(self) * c

    __rmul__ = __mul__

    def __neg__(self):
        return -Objective.of(self)


def _spec_value(v) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(_number(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return _number(v)


class NonSmoothTerm(Term):
    """A term applied through its proximal operator rather than its gradient."""

    smooth: ClassVar[bool] = False

    @abc.abstractmethod
    def prox(self, V: Tensor, step: float | Tensor) -> Tensor:
        """``prox_{step·f}(V) = argmin_Z f(Z) + ‖Z − V‖²/(2·step)``."""


@dataclass(frozen=True)
class NonNegative(NonSmoothTerm):
    """The indicator ``ι(Z ≥ 0)``: 0 on the non-negative orthant, +∞ elsewhere; prox is ReLU.

    It lives beside ``Objective`` because ``Objective.prox`` composes it with separable penalties.
    """

    symbol: ClassVar[str] = "NonNeg"

    def __call__(self, Z: Tensor) -> Tensor:
        check_tokens(Z, "Z", check_finite=False)
        outside = (Z < 0).any(-1).any(-1)
        inf = torch.full_like(outside, float("inf"), dtype=Z.dtype)
        return torch.where(outside, inf, torch.zeros_like(outside, dtype=Z.dtype))

    def prox(self, V: Tensor, step) -> Tensor:
        return torch.relu(V)

    def __str__(self) -> str:
        return "ι≥0(Z)"

    def latex(self) -> str:
        return r"\iota_{\geq 0}(\mathbf{Z})"


class SeparablePenalty(NonSmoothTerm):
    """An entry-wise penalty ``λ Σ φ(|z|)`` with φ non-decreasing; such penalties of one kind add
    (their λ's sum), and the indicator of ``Z ≥ 0`` composes with their prox as a ReLU after it."""

    lam: float

    def scaled(self, c: float) -> "SeparablePenalty":
        return type(self)(lam=c * self.lam)


@dataclass(frozen=True)
class Objective:
    """``Σ_i c_i · f_i(Z; params)``: a weighted sum of terms."""

    terms: tuple[tuple[float, Term], ...]

    @staticmethod
    def of(x) -> "Objective":
        if isinstance(x, Objective):
            return x
        if isinstance(x, Term):
            return Objective(((1.0, x),))
        raise TypeError(f"expected an objective Term or Objective, got {type(x).__name__}")

    # ---- evaluation -------------------------------------------------------------------------
    @property
    def requires(self) -> tuple[str, ...]:
        names: list[str] = []
        for _, t in self.terms:
            names += [n for n in t.requires if n not in names]
        return tuple(names)

    def __call__(self, Z: Tensor, **params) -> Tensor:
        """Evaluate on ``Z (..., N, d)``; each term gets the parameters it declares."""
        unknown = set(params) - set(self.requires)
        if unknown:
            raise TypeError(f"unexpected parameter(s) {sorted(unknown)} for objective {self}; it takes "
                            f"{list(self.requires)}")
        total = None
        for c, t in self.terms:
            missing = [n for n in t.requires if n not in params]
            if missing:
                raise TypeError(f"term {t} needs parameter(s) {missing}: call objective(Z, "
                                f"{', '.join(f'{m}=...' for m in missing)})")
            v = c * t(Z, **{n: params[n] for n in t.requires})
            total = v if total is None else total + v
        if total is None:
            return torch.zeros(Z.shape[:-2], dtype=Z.dtype, device=Z.device)
        return total

    # ---- structure --------------------------------------------------------------------------
    def smooth_part(self) -> "Objective":
        return Objective(tuple((c, t) for c, t in self.terms if t.smooth))

    def nonsmooth_part(self) -> "Objective":
        return Objective(tuple((c, t) for c, t in self.terms if not t.smooth))

    def prox(self, V: Tensor, step: float | Tensor) -> Tensor:
        """Proximal operator of the non-smooth part with step ``step``.

        Closed forms: separable penalties of one kind add; ``NonNegative`` composes with them as a
        ReLU after their prox, e.g. ``prox(L1(λ) + NonNegative)(v) = ReLU(v − step·λ)``.
        """
        penalty, nonneg = None, False
        for c, t in self.nonsmooth_part().terms:
            if c <= 0:
                raise ValueError(f"non-smooth term {t} needs a coefficient > 0 to have a proximal operator, got {c}")
            if isinstance(t, NonNegative):
                nonneg = True
            elif isinstance(t, SeparablePenalty):
                if penalty is not None and type(penalty) is not type(t):
                    raise ValueError(f"no closed-form proximal operator for {penalty} + {t}: combine at most one kind "
                                     f"of penalty with NonNegative")
                penalty = t.scaled(c) if penalty is None else type(t)(lam=penalty.lam + c * t.lam)
            else:
                raise ValueError(f"no proximal operator is known for term {t}")
        out = V if penalty is None else penalty.prox(V, step)
        return torch.relu(out) if nonneg else out

    # ---- arithmetic -------------------------------------------------------------------------
    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self
        return Objective(self.terms + Objective.of(other).terms)

    def __radd__(self, other):
        if isinstance(other, (int, float)) and other == 0:  # sum([...]) starts at 0
            return self
        return Objective.of(other) + self

    def __sub__(self, other):
        return self + (-Objective.of(other))

    def __mul__(self, c):
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
            raise TypeError(f"an objective can only be scaled by a finite number, got {c!r}")
        return Objective(tuple((c * ci, t) for ci, t in self.terms))

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    # ---- printing ---------------------------------------------------------------------------
    def _join(self, render, times: str) -> str:
        if not self.terms:
            return "0"
        parts = []
        for i, (c, t) in enumerate(self.terms):
            sign = "-" if c < 0 else "+"
            mag = abs(c)
            body = render(t) if mag == 1 else f"{_number(mag)}{times}{render(t)}"
            parts.append(("-" + body if sign == "-" else body) if i == 0 else f" {sign} {body}")
        return "".join(parts)

    def __str__(self) -> str:
        return self._join(str, "·")

    def latex(self) -> str:
        return self._join(lambda t: t.latex(), r" \, ")

    def spec(self) -> str:
        """Parseable text: ``srr.objective.parse(obj.spec()) == obj``."""
        return self._join(lambda t: t.spec(), "*")
