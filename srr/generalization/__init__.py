"""Judging a complexity measure against the generalization gap (HU24 §5, MATH.md §5).

- rank statistics: ``kendall_tau``, ``granulated_psi``, ``compare_measures`` (statistics.py)
- baseline complexity measures: norms, path-norm, margin, sharpness (baselines.py)

Neither uses SRR code: any measure, any ``torch.nn.Module``. See ``docs/guide-generalization.md``.
"""
from srr.generalization.baselines import (classification_error, frobenius_product, frobenius_sum, inverse_margin,
                                          output_margins, path_norm, perturbation_sigma, sharpness, spectral_product,
                                          spectral_sum, weight_matrices)
from srr.generalization.statistics import (GranulatedKendall, compare_measures, comparison_rows, granulated_psi,
                                           kendall_tau)

__all__ = [
    "kendall_tau", "granulated_psi", "compare_measures", "comparison_rows", "GranulatedKendall",
    "frobenius_product", "frobenius_sum", "spectral_product", "spectral_sum", "path_norm",
    "inverse_margin", "output_margins", "sharpness", "perturbation_sigma", "classification_error",
    "weight_matrices",
]
