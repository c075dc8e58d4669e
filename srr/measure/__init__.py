"""Measurement and regularisation with sparse rate reduction (HU24 §5–6, MATH.md §5–6).

- ``measure(model, data)`` -> :class:`Measurement`: per-layer R, R^c, ΔR, sparsity, μ_SRR (measure.py, table.py)
- ``SRRRegularizer(model, ...)``: η · μ_SRR of chosen layers as a loss term, by hooks (regularizer.py)
- token sites and hooks (tokens.py); subspace policies ``FromModel``, ``FromData``, ``Learned`` (subspaces.py)
- global-batch rates under ``torch.distributed`` (distributed.py); per-layer parts (terms.py)
- generalization statistics: ``kendall_tau``, ``granulated_psi``, ``compare_measures`` (generalization.py)
- baseline complexity measures: norms, path-norm, margin, sharpness (baselines.py)
"""
from srr.measure.baselines import (classification_error, frobenius_product, frobenius_sum, inverse_margin,
                                   output_margins, path_norm, perturbation_sigma, sharpness, spectral_product,
                                   spectral_sum, weight_matrices)
from srr.measure.distributed import global_gram, global_mean, rates_from_gram
from srr.measure.generalization import GranulatedKendall, compare_measures, comparison_rows, granulated_psi, kendall_tau
from srr.measure.measure import measure
from srr.measure.regularizer import SRRRegularizer
from srr.measure.subspaces import Fixed, FromData, FromModel, Learned, SubspacePolicy, heads_to_subspaces
from srr.measure.table import SITES, Measurement, MeasurementRow
from srr.measure.terms import SRRTerms, batch_terms, mean_terms, sample_terms
from srr.measure.tokens import TokenCapture, TokenSite, default_sites, to_tokens

__all__ = [
    "measure", "Measurement", "MeasurementRow", "SITES",
    "SRRRegularizer", "SRRTerms", "sample_terms", "batch_terms", "mean_terms",
    "TokenCapture", "TokenSite", "default_sites", "to_tokens",
    "SubspacePolicy", "FromModel", "FromData", "Learned", "Fixed", "heads_to_subspaces",
    "rates_from_gram", "global_gram", "global_mean",
    "kendall_tau", "granulated_psi", "compare_measures", "comparison_rows", "GranulatedKendall",
    "frobenius_product", "frobenius_sum", "spectral_product", "spectral_sum", "path_norm",
    "inverse_margin", "output_margins", "sharpness", "perturbation_sigma", "classification_error",
    "weight_matrices",
]


from srr._callable import make_callable  # noqa: E402

make_callable(__name__, measure)  # srr.measure(model, data, ...) calls measure(); srr.measure.X stays this package
