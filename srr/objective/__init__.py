"""The symbolic objective: immutable terms, weighted sums, printing and parsing (MATH.md §2, §7, §8)."""
from srr.objective.base import NonSmoothTerm, Objective, SeparablePenalty, Term
from srr.objective.causal import CausalCompressedCodingRate, CausalTerm, CausalVariationalCompressedCodingRate
from srr.objective.parse import parse
from srr.objective.terms import (CodingRate, CompressedCodingRate, L0, L1, LeastSquares, NonNegative,
                                 SquaredL2, VariationalCompressedCodingRate)

__all__ = [
    "Term", "NonSmoothTerm", "SeparablePenalty", "Objective", "parse",
    "CodingRate", "CompressedCodingRate", "VariationalCompressedCodingRate", "LeastSquares", "SquaredL2", "L1", "L0",
    "NonNegative", "CausalTerm", "CausalCompressedCodingRate", "CausalVariationalCompressedCodingRate",
]
