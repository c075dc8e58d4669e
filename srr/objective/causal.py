"""Causal rate terms for language (MATH.md §8, E14 and E16): each position's prefix rate, differentiated
in its own last token only.

A sequence ``Z (..., T, d)`` has prefixes ``Z_{≤t}``; position t's rate is the rate of its prefix with
scale ``β_t = p/(tε²)``, and only ``z_t`` moves in it — the earlier tokens are held fixed (stop-gradient):

- (E14) ``CausalCompressedCodingRate``: ``R^c_causal(Z) = Σ_t R^c([sg(Z_{<t}); z_t]; U, ε)``, whose gradient in
  ``z_t`` is ``Σ_k β_t (z_t U_k)(I_p + β_t S_{k,t})⁻¹ U_kᵀ``, ``S_{k,t} = Σ_{s≤t} (z_s U_k)ᵀ(z_s U_k)``;
- (E16) ``CausalVariationalCompressedCodingRate``: ToST's variational term (E12) over each prefix, with
  memberships ``Π (..., T, K)``; its gradient in ``z_t`` (Π held fixed) is
  ``(p/(tε²)) Σ_k [π_tk (A_k)_t ⊘ (1 + (p/ε²) m_{k,t})] U_kᵀ``, ``m_{k,t}`` a cumulative second moment.

The stop-gradient is an argument, not a ``detach``: ``term(Z, U=U, context=C)`` is the sum over t of the rate
of ``[C_{<t}; z_t]``, so differentiating in ``Z`` with ``C = Z`` held constant gives the causal gradient while
``C`` stays differentiable for an outer autograd (training through a derived step). Without ``context``
the prefixes are ``Z.detach()``'s. Each position has its own Lipschitz bound ``L_t = β_t ‖[U_k]_k‖₂²``
(E7 with N → t; ``lipschitz_per_position``): a step ``z_t − κ_t ∇_{z_t}`` with ``κ_t ≤ 1/L_t`` does not
increase the t-th prefix rate.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from srr._checks import check_eps, check_subspaces, check_tokens
from srr.linalg import accumulation_dtype, logdet_identity_plus, solve_identity_plus, working_dtype
from srr.objective.base import Term, _spec_value
from srr.rates import _check_membership, _project

__all__ = ["CausalTerm", "CausalCompressedCodingRate", "CausalVariationalCompressedCodingRate",
           "causal_compressed_coding_rate", "causal_compressed_coding_rate_grad",
           "causal_variational_compressed_coding_rate", "causal_variational_compressed_coding_rate_grad",
           "prefix_scale", "causal_lipschitz"]


def _single_eps(eps) -> float:
    eps = check_eps(eps)
    if not isinstance(eps, float):
        raise ValueError(f"eps of a causal rate must be one finite number > 0 (ε, not ε²), got {eps!r}")
    return eps


def prefix_scale(width: int, T: int, eps: float, like: Tensor) -> Tensor:
    """``β_t = width/(tε²)`` for ``t = 1 … T``, shape ``(T,)`` in ``like``'s dtype and device (E14, E16)."""
    t = torch.arange(1, T + 1, dtype=like.dtype, device=like.device)
    return width / (t * eps**2)


def causal_lipschitz(U: Tensor, eps: float, T: int) -> Tensor:
    """``L_t = β_t ‖[U_k]_k‖₂²`` (E7 with N → t, one ε) for ``t = 1 … T``: ``(T,)`` on ``U``'s device (float64 where
    the device has it), without gradient.

    The Hessian of the t-th prefix rate (E14 or E16, any fixed Π in [0, 1]) in its own token ``z_t`` is
    bounded by ``L_t``, so ``κ_t ≤ 1/L_t`` does not increase it; ``L_t = L_1/t``. Tensor ops only (no
    ``float``), so that ``torch.compile`` traces a derived layer's ``"auto"`` step without a graph break."""
    if not isinstance(U, Tensor) or U.ndim != 3:
        raise ValueError(f"U must be subspaces of shape (K, d, p), got {getattr(U, 'shape', type(U).__name__)}")
    eps = _single_eps(eps)
    K, d, p = U.shape
    with torch.no_grad():
        W = U.detach().to(accumulation_dtype(U.device)).permute(1, 0, 2).reshape(d, K * p)  # [U_1 … U_K]
        L1 = torch.linalg.matrix_norm(W, ord=2).square() * (p / eps**2)
        return L1 / torch.arange(1, T + 1, dtype=W.dtype, device=W.device)


def _context(Z: Tensor, context: Tensor | None) -> Tensor:
    if context is None:
        return Z.detach()
    if not isinstance(context, Tensor) or context.shape != Z.shape:
        raise ValueError(f"context must be a tensor of Z's shape {tuple(Z.shape)} (the tokens whose prefixes "
                         f"condition each position), got {getattr(context, 'shape', type(context).__name__)}")
    return context


def _exclusive_cumsum(X: Tensor, dim: int) -> Tensor:
    """``Σ_{s<t} X_s`` along ``dim`` (0 at t = 1): the prefix before each position, shifted so that
    position t's value never touches ``X_t`` or later."""
    total = X.cumsum(dim)
    zero = torch.zeros_like(total.narrow(dim, 0, 1))
    return torch.cat([zero, total.narrow(dim, 0, X.shape[dim] - 1)], dim)


def causal_compressed_coding_rate(Z: Tensor, U: Tensor, eps: float, *, context: Tensor | None = None,
                                  per_position: bool = False) -> Tensor:
    """(E14) ``Σ_t Σ_k ½ logdet(I_p + β_t S_{k,t})``, ``S_{k,t} = C_{k,<t}ᵀC_{k,<t} + (z_t U_k)ᵀ(z_t U_k)``.

    ``Z (..., T, d)``, ``U (K, d, p)``; ``context`` (default ``Z.detach()``) supplies the earlier tokens of
    each prefix (``C_k = context·U_k``). Returns ``(...)``, or ``(..., T)`` with ``per_position=True`` (the
    t-th prefix rate R^c(Z_{≤t}) at ``context = Z``). Forms the ``(..., K, T, p, p)`` prefix Grams: a
    reference, not a fast path (``srr.layers.CausalExactCompression`` is that).
    """
    check_tokens(Z, "Z", check_finite=False)
    check_subspaces(U, Z.shape[-1])
    eps = _single_eps(eps)
    context = _context(Z, context)
    K, _, p = U.shape
    T = Z.shape[-2]
    with torch.autocast(Z.device.type, enabled=False):
        wd = working_dtype(Z.dtype)
        Uw = U.to(wd)
        A, C = _project(Z.to(wd), Uw), _project(context.to(wd), Uw)  # (..., K, T, p)
        acc = accumulation_dtype(Z.device)
        A, C = A.to(acc), C.to(acc)
        own = A.unsqueeze(-1) * A.unsqueeze(-2)  # (..., K, T, p, p)
        before = _exclusive_cumsum(C.unsqueeze(-1) * C.unsqueeze(-2), -3)  # Σ_{s<t} c_s c_sᵀ
        beta = prefix_scale(p, T, eps, A).expand(own.shape[:-2])  # (..., K, T)
        per = 0.5 * logdet_identity_plus(before + own, beta).sum(-2)  # (..., T)
        per = per.to(wd)
    return per if per_position else per.sum(-1)


def causal_compressed_coding_rate_grad(Z: Tensor, U: Tensor, eps: float) -> Tensor:
    """(E14) ``∇_{z_t} = Σ_k β_t (z_t U_k)(I_p + β_t S_{k,t})⁻¹ U_kᵀ`` for every t: ``(..., T, d)``, one p×p
    solve per position and head (the closed form that automatic differentiation must reproduce)."""
    check_tokens(Z, "Z")
    check_subspaces(U, Z.shape[-1])
    eps = _single_eps(eps)
    K, d, p = U.shape
    T = Z.shape[-2]
    A = _project(Z, U)  # (..., K, T, p)
    S = (A.unsqueeze(-1) * A.unsqueeze(-2)).cumsum(-3)  # (..., K, T, p, p): S_{k,t}
    beta = prefix_scale(p, T, eps, A)  # (T,)
    solved = solve_identity_plus(S, beta.expand(S.shape[:-2]), A.unsqueeze(-1)).squeeze(-1)  # (..., K, T, p)
    coeff = beta[:, None] * solved
    return coeff.transpose(-3, -2).flatten(-2) @ U.permute(0, 2, 1).reshape(K * p, d)


def _causal_moments(A: Tensor, C: Tensor, Pi: Tensor) -> tuple[Tensor, Tensor]:
    """``n_{k,t} = Σ_{s≤t} π_sk`` ``(..., K, T)`` and ``m_{k,t}`` ``(..., K, T, p)``: the prefix's membership-weighted
    second moment, the earlier tokens from ``C`` and token t's own from ``A`` (0 where ``n_{k,t} = 0``)."""
    Pi_k = Pi.mT.unsqueeze(-1)  # (..., K, T, 1)
    n = Pi_k.squeeze(-1).cumsum(-1)  # (..., K, T)
    s = _exclusive_cumsum(Pi_k * C.square(), -2) + Pi_k * A.square()  # (..., K, T, p)
    safe_n = torch.where(n > 0, n, torch.ones_like(n))
    return n, s / safe_n.unsqueeze(-1)


def causal_variational_compressed_coding_rate(Z: Tensor, U: Tensor, Pi: Tensor, eps: float, *,
                                              context: Tensor | None = None, per_position: bool = False,
                                              check_finite: bool = True) -> Tensor:
    """(E16) ``Σ_t Σ_k (n_{k,t}/2t) Σ_j log(1 + (p/ε²) m_{k,t,j})``: ToST's variational term (E12) over each prefix.

    ``Z (..., T, d)``, ``U (K, d, p)``, ``Pi (..., T, K)`` (entries in [0, 1]); ``context`` (default
    ``Z.detach()``) supplies the earlier tokens of each prefix. Returns ``(...)``, or ``(..., T)`` with
    ``per_position=True``. O(T·K·p) by cumulative sums.
    """
    check_tokens(Z, "Z", check_finite=check_finite)
    check_subspaces(U, Z.shape[-1])
    eps = _single_eps(eps)
    context = _context(Z, context)
    K, _, p = U.shape
    T = Z.shape[-2]
    _check_membership(Pi, Z, K, check_values=check_finite)
    with torch.autocast(Z.device.type, enabled=False):
        wd = working_dtype(Z.dtype)
        Uw = U.to(wd)
        A, C = _project(Z.to(wd), Uw), _project(context.to(wd), Uw)  # (..., K, T, p)
        n, m = _causal_moments(A, C, Pi.to(wd))
        t = torch.arange(1, T + 1, dtype=wd, device=Z.device)
        per = (n / (2 * t) * torch.log1p(p / eps**2 * m).sum(-1)).sum(-2)  # (..., T)
    return per if per_position else per.sum(-1)


def causal_variational_compressed_coding_rate_grad(Z: Tensor, U: Tensor, Pi: Tensor, eps: float) -> Tensor:
    """(E16) ``∇_{z_t} = (p/(tε²)) Σ_k [π_tk (A_k)_t ⊘ (1 + (p/ε²) m_{k,t})] U_kᵀ`` with Π held fixed: ``(..., T, d)``,
    row t of (E13) on the prefix ``Z_{≤t}``."""
    check_tokens(Z, "Z")
    check_subspaces(U, Z.shape[-1])
    eps = _single_eps(eps)
    K, d, p = U.shape
    T = Z.shape[-2]
    _check_membership(Pi, Z, K, check_values=True)
    A = _project(Z, U)  # (..., K, T, p)
    _, m = _causal_moments(A, A, Pi)
    beta = prefix_scale(p, T, eps, A)  # (T,)
    coeff = beta[:, None] * Pi.mT.unsqueeze(-1) * A / (1 + p / eps**2 * m)  # (..., K, T, p)
    return coeff.transpose(-3, -2).flatten(-2) @ U.permute(0, 2, 1).reshape(K * p, d)


class CausalTerm(Term):
    """A term summed over prefixes whose gradient moves each token in its own prefix's rate only.

    ``term(Z, **params, context=None)``: ``context`` holds the earlier tokens of every prefix (the
    stop-gradient of E14); ``srr.derive_step`` passes ``context = Z`` and differentiates in ``Z`` alone.
    Its step size is per position (``lipschitz_per_position``), ``step_size="auto"`` gives ``κ_t = 1/L_t``.
    """

    causal: ClassVar[bool] = True

    @abc.abstractmethod
    def lipschitz_per_position(self, T: int, d: int, **params) -> Tensor:
        """``L_t`` for ``t = 1 … T``: float64 ``(T,)``."""

    def lipschitz(self, N: int, d: int, **params) -> float:
        """The largest per-position bound (``L_1``), valid at every position; ``auto`` steps use ``L_t``."""
        return float(self.lipschitz_per_position(N, d, **params).max())


def _tuple_eps(term) -> None:
    if isinstance(term.eps, (list, tuple)):
        raise ValueError(f"eps of {type(term).__name__} must be one finite number > 0 (ε, not ε²), got {term.eps!r}")
    object.__setattr__(term, "eps", _single_eps(term.eps))


@dataclass(frozen=True)
class CausalCompressedCodingRate(CausalTerm):
    """(E14) ``R^c_causal(Z; U, ε) = Σ_t R^c([sg(Z_{<t}); z_t]; U, ε)``, ``β_t = p/(tε²)``; ``U (K, d, p)`` at
    evaluation. Its derived step moves ``z_t`` along ``−∇_{z_t}`` of its own prefix's rate (one p×p solve per
    position and head); at t = T it is row T of (E6) on the whole sequence."""

    eps: float = 0.5
    symbol: ClassVar[str] = "RcCausal"
    requires: ClassVar[tuple[str, ...]] = ("U",)

    def __post_init__(self):
        _tuple_eps(self)

    def __call__(self, Z: Tensor, U: Tensor, context: Tensor | None = None) -> Tensor:
        return causal_compressed_coding_rate(Z, U, self.eps, context=context)

    def lipschitz_per_position(self, T: int, d: int, *, U: Tensor, **params) -> Tensor:
        """(E14) ``L_t = β_t ‖[U_k]_k‖₂²``."""
        return causal_lipschitz(U, self.eps, T)

    def __str__(self) -> str:
        return f"R^c_causal(Z; U, ε={_spec_value(self.eps)})"

    def latex(self) -> str:
        return rf"R^c_{{\mathrm{{causal}}}}(\mathbf{{Z}};\,\mathbf{{U}},\,\epsilon={_spec_value(self.eps)})"


@dataclass(frozen=True)
class CausalVariationalCompressedCodingRate(CausalTerm):
    """(E16) ``Σ_t R^c_var([sg(Z_{<t}); z_t]; U, Π_{≤t}, ε)``: ToST's variational term over each prefix;
    ``U (K, d, p)`` and a membership ``Pi (..., T, K)`` (entries in [0, 1]) at evaluation. Its derived step
    with Π held fixed is the causal Token Statistics Self-Attention step, O(T·K·p) by cumulative sums."""

    eps: float = 0.5
    symbol: ClassVar[str] = "RcVarCausal"
    requires: ClassVar[tuple[str, ...]] = ("U", "Pi")

    def __post_init__(self):
        _tuple_eps(self)

    def __call__(self, Z: Tensor, U: Tensor, Pi: Tensor, context: Tensor | None = None) -> Tensor:
        return causal_variational_compressed_coding_rate(Z, U, Pi, self.eps, context=context)

    def lipschitz_per_position(self, T: int, d: int, *, U: Tensor, **params) -> Tensor:
        """(E16) ``L_t = β_t ‖[U_k]_k‖₂²``, for any fixed Π in [0, 1] (as E13's bound)."""
        return causal_lipschitz(U, self.eps, T)

    def __str__(self) -> str:
        return f"R^c_var,causal(Z; U, Π, ε={_spec_value(self.eps)})"

    def latex(self) -> str:
        return (rf"R^c_{{\mathrm{{var,causal}}}}(\mathbf{{Z}};\,\mathbf{{U}},\,\boldsymbol{{\Pi}},\,"
                rf"\epsilon={_spec_value(self.eps)})")
