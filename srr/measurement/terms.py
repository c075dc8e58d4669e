"""The parts of μ_SRR (E4) of one layer, for the two token-set scopes.

- ``sample_terms``: each sample's N tokens are one token set (YU23/HU24's form): ``Z (B, N, d)``
  gives per-sample R (E1), R^c (E2), ‖Z‖₀, ‖Z‖₁ and μ_SRR, each ``(B,)``.
- ``batch_terms``: the batch is one token set of one feature row per sample (MCR²'s form):
  ``F (B, d)``; under ``torch.distributed`` the set is the **global** batch, through the Gram
  matrix summed over ranks (srr/measurement/distributed.py). Each part is a scalar.

μ_SRR = λ‖Z‖₀ + R^c − R with ‖Z‖₀ the raw count of non-zero entries, as
:func:`srr.rates.sparse_rate_reduction`; only R^c − R carries gradient.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from srr.linalg import working_dtype
from srr.measurement.distributed import all_reduce_sum, global_gram
from srr.rates import coding_rate, compressed_coding_rate, rates_from_gram, srr_from_parts

__all__ = ["SRRTerms", "batch_terms", "mean_terms", "sample_terms", "sparsity_counts", "terms_from_parts"]


class SRRTerms(NamedTuple):
    """One layer's parts: shape ``(B,)`` per sample (``sample_terms``) or ``()`` (``batch_terms``)."""

    R: Tensor  # (E1) coding rate
    Rc: Tensor  # (E2) compressed coding rate
    l0: Tensor  # ‖Z‖₀, number of non-zero entries (no gradient)
    l1: Tensor  # ‖Z‖₁
    zero_fraction: Tensor  # fraction of exactly-zero entries
    srr: Tensor  # (E4) μ_SRR = λ‖Z‖₀ + R^c − R

    @property
    def dR(self) -> Tensor:
        """(E3) ΔR = R − R^c."""
        return self.R - self.Rc


def sample_terms(Z: Tensor, U: Tensor, *, eps: float, lam: float, R: Tensor | None = None,
                 check_finite: bool = False) -> SRRTerms:
    """Per-token-set parts of μ_SRR for tokens ``Z (..., N, d)`` and subspaces ``U (K, d, p)``.

    ``R``: the coding rates of these token sets when already known (they do not depend on U).
    """
    if R is None:
        R = coding_rate(Z, eps, check_finite=check_finite)  # (...)
    Rc = compressed_coding_rate(Z, U, eps, check_finite=False)  # (...)
    return terms_from_parts(R, Rc, *sparsity_counts(Z, Rc.dtype), size=Z.shape[-2] * Z.shape[-1], lam=lam)


def sparsity_counts(Z: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(‖Z‖₀, ‖Z‖₁)`` of each token set ``Z (..., N, d)``, each ``(...)`` in ``dtype``, without gradient.

    ``count_nonzero`` reads Z once and builds no boolean copy of it (``(Z != 0).sum()`` does).
    """
    with torch.no_grad():
        return torch.count_nonzero(Z, dim=(-2, -1)).to(dtype), Z.abs().sum((-2, -1), dtype=dtype)


def terms_from_parts(R: Tensor, Rc: Tensor, l0: Tensor, l1: Tensor, *, size: int, lam: float) -> SRRTerms:
    """:class:`SRRTerms` of token sets of ``size = N·d`` entries from R (E1), R^c (E2), ‖Z‖₀ and ‖Z‖₁."""
    return SRRTerms(R, Rc, l0, l1, 1.0 - l0 / size, srr_from_parts(R, Rc, l0, lam))


def batch_terms(F: Tensor, U: Tensor, *, eps: float, lam: float, group=None) -> SRRTerms:
    """Parts of μ_SRR of the feature rows ``F (B, d)`` of the (global) batch, as one token set."""
    G, n = global_gram(F, group)  # (d, d) float64, summed over ranks
    R, Rc = rates_from_gram(G, n, U, eps)
    with torch.no_grad():
        counts = torch.stack([(F != 0).sum().to(R.dtype), F.abs().sum(dtype=R.dtype)])
        nonzero, l1 = all_reduce_sum(counts, group).unbind()
    terms = SRRTerms(R, Rc, nonzero, l1, 1.0 - nonzero / (n * F.shape[-1]), srr_from_parts(R, Rc, nonzero, lam))
    return SRRTerms(*(t.to(working_dtype(F.dtype)) for t in terms))  # float32 values for float32 features


def mean_terms(terms: SRRTerms, group=None) -> SRRTerms:
    """Per-sample parts ``(B,)`` averaged over the (global) batch: one all-reduce of the sums and count."""
    rows = torch.stack([*terms, torch.ones_like(terms.R)])  # (7, B)
    sums = all_reduce_sum(rows.sum(-1), group)  # (7,)
    return SRRTerms(*(sums[:-1] / sums[-1]).unbind())
