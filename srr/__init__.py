"""srr: objective-driven layer design for white-box transformers (sparse rate reduction).

The dependency direction is one way: objective → derivation → layers → models →
measurement / regularisation → training → CLI (see ``docs/architecture.md``).
"""
from srr import objective
from srr.rates import (Sparsity, coding_rate, coding_rate_grad, compressed_coding_rate,
                       compressed_coding_rate_grad, crate_vis_compressed_coding_rate, rate_reduction,
                       sparse_rate_reduction, sparsity)

__version__ = "0.1.0"

__all__ = [
    "objective",
    "coding_rate", "compressed_coding_rate", "rate_reduction", "sparsity", "Sparsity",
    "sparse_rate_reduction", "coding_rate_grad", "compressed_coding_rate_grad",
    "crate_vis_compressed_coding_rate",
]
