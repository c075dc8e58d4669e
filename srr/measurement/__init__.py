"""Measurement and regularisation with sparse rate reduction (HU24 §5–6, MATH.md §5–6).

- ``measure(model, data)`` -> :class:`Measurement`: per-layer R, R^c, ΔR, sparsity, μ_SRR (measure.py, table.py)
- ``SRRRegularizer(model, ...)``: η · μ_SRR of chosen layers as a loss term, by hooks (regularizer.py)
- token sites (tokens.py); subspace policies ``FromModel``, ``FromData``, ``Learned``, ``Fixed`` (subspaces.py)
- internals: per-layer parts (terms.py), global-batch rates under ``torch.distributed`` (distributed.py)

Rank statistics and baseline measures live in :mod:`srr.generalization`.
"""
from srr.measurement.measure import measure
from srr.measurement.regularizer import SRRRegularizer
from srr.measurement.subspaces import Fixed, FromData, FromModel, Learned, SubspacePolicy
from srr.measurement.table import SITES, Measurement, MeasurementRow
from srr.measurement.terms import SRRTerms
from srr.measurement.tokens import TokenSite

__all__ = [
    "measure", "Measurement", "MeasurementRow", "SITES", "SRRRegularizer", "SRRTerms", "TokenSite",
    "SubspacePolicy", "FromModel", "FromData", "Learned", "Fixed",
]
