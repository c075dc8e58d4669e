"""Hypothesis strategies that reach the corners of the rate functions' domain.

Token sets ``Z (B, N, d)`` in float64 from four shape regimes — N ≫ d, d ≫ N, square, and a single
token — each optionally made rank-deficient, given duplicate tokens or all-zero tokens, at a scale
drawn log-uniformly from 1e-6 to 1e4. Subspaces ``U (K, d, p)`` are general (non-orthonormal)
matrices or orthonormal blocks, and include the overcomplete case K·p > d.
"""
from __future__ import annotations

import torch
from hypothesis import settings
from hypothesis import strategies as st

f64 = torch.float64


def core(n: int = 100) -> settings:
    """Settings for a core property: at least ``n`` examples, more when the profile asks for more."""
    return settings(max_examples=max(n, settings.default.max_examples))


REGIMES = {  # (N range, d range)
    "tall": ((24, 96), (1, 6)),  # N ≫ d
    "wide": ((1, 6), (24, 64)),  # d ≫ N
    "square": ((2, 12), (2, 12)),
    "one_token": ((1, 1), (1, 16)),
}


@st.composite
def token_sets(draw, *, batch=(1, 2), min_d: int = 1, scales=(-6.0, 4.0)):
    """``(Z (B, N, d), description)``; ``scales`` are log10 bounds of the token scale."""
    regime = draw(st.sampled_from(sorted(REGIMES)))
    (n_lo, n_hi), (d_lo, d_hi) = REGIMES[regime]
    N = draw(st.integers(n_lo, n_hi))
    d = draw(st.integers(max(d_lo, min_d), max(d_hi, min_d)))
    B = draw(st.integers(*batch))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = 10.0 ** draw(st.floats(*scales))
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(B, N, d, generator=g, dtype=f64)
    shape = draw(st.sampled_from(["full", "rank_deficient", "duplicates", "zeros"]))
    if shape == "rank_deficient" and min(N, d) > 1:
        r = draw(st.integers(1, min(N, d) - 1))
        Z = torch.randn(B, N, r, generator=g, dtype=f64) @ torch.randn(B, r, d, generator=g, dtype=f64) / r**0.5
    elif shape == "duplicates" and N > 1:
        Z = Z[:, torch.randint(0, max(1, N // 2), (N,), generator=g)]  # every token repeats one of N // 2
    elif shape == "zeros":
        zero = torch.rand(N, generator=g) < 0.5
        Z[:, zero] = 0.0  # some tokens (possibly all) are zero
    return scale * Z, f"{regime}, {shape}, B={B} N={N} d={d}, scale {scale:.1e}"


@st.composite
def subspace_sets(draw, d: int, *, orthonormal=None):
    """``U (K, d, p)``: general matrices (any K·p, K·p > d included) or orthonormal blocks (K·p ≤ d)."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    ortho = draw(st.booleans()) if orthonormal is None else orthonormal
    if ortho:
        K = draw(st.integers(1, d))
        p = draw(st.integers(1, d // K))
        Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))[0]
        return Q[:, : K * p].reshape(d, K, p).permute(1, 0, 2).contiguous()
    K = draw(st.integers(1, 4))
    p = draw(st.integers(1, d + 3))  # K·p > d (overcomplete heads) is drawn often
    return torch.randn(K, d, p, generator=g, dtype=f64) / d**0.5
