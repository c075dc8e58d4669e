"""Core properties of the rates (E1–E7) on token sets that reach the corners of the domain.

Strategies (``tests/token_strategies.py``): N ≫ d, d ≫ N, one token; rank-deficient, duplicate and
zero tokens; scales 1e-6 … 1e4; general and overcomplete (K·p > d) subspaces. Each property runs
at least 100 examples (derandomized under the ``ci`` profile; ``SRR_HYPOTHESIS_PROFILE=random``
explores new ones on every run).
"""
from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from srr.derivation import compression_step_size
from srr.rates import (coding_rate, coding_rate_grad, compressed_coding_rate, compressed_coding_rate_grad,
                       rate_scale, rates_from_gram, sparse_rate_reduction)
from token_strategies import core, subspace_sets, token_sets

epss = st.floats(0.05, 2.0)


EPS64 = torch.finfo(torch.float64).eps


def literal_logdet(G, scale):
    """``(½ logdet(I + scale·G), its rounding bound)``: the matrix formed as written, then LU (slogdet).

    Forming ``I + scale·G`` rounds each of its unit eigenvalues by about ``ε·scale·‖G‖₂``: for huge,
    rank-deficient token sets that, not the library, limits the agreement.
    """
    m = G.shape[-1]
    eye = torch.eye(m, dtype=G.dtype)
    value = 0.5 * torch.linalg.slogdet(eye + scale * G)[1]
    bound = 10 * m * EPS64 * scale * torch.linalg.matrix_norm(G, ord=2)
    return value, bound


def literal_coding_rate(Z, eps):
    """(E1) as written: the d×d matrix (no Sylvester switch, no Cholesky)."""
    N, d = Z.shape[-2:]
    return literal_logdet(Z.mT @ Z, rate_scale(d, N, eps))


def literal_compressed_coding_rate(Z, U, eps):
    """(E2) as written, one head at a time: Σ_k ½ logdet(I_p + β A_kᵀA_k), A_k = Z U_k, for any U."""
    K, _, p = U.shape
    beta = rate_scale(p, Z.shape[-2], eps)
    heads = [literal_logdet((Z @ U[k]).mT @ (Z @ U[k]), beta) for k in range(K)]
    return sum(h[0] for h in heads), sum(h[1] for h in heads)


def close(a, reference, rtol=1e-9):
    """``a`` within ``rtol`` of the literal value, or within the literal value's own rounding bound."""
    value, bound = reference
    return bool(((a - value).abs() <= rtol * value.abs() + bound + 1e-12).all())


@core()
@given(token_sets(), epss)
def test_coding_rate_equals_the_literal_logdet(drawn, eps):
    Z, _ = drawn
    R = coding_rate(Z, eps)
    assert (R >= 0).all()
    assert close(R, literal_coding_rate(Z, eps))


@core()
@given(st.data(), epss)
def test_compressed_rate_equals_the_per_head_logdet_for_any_subspaces(data, eps):
    """R^c against a literal per-head logdet for general, non-orthonormal U, K·p > d included."""
    Z, _ = data.draw(token_sets())
    U = data.draw(subspace_sets(Z.shape[-1]))
    Rc = compressed_coding_rate(Z, U, eps)
    assert (Rc >= 0).all()
    assert close(Rc, literal_compressed_coding_rate(Z, U, eps))


@core()
@given(st.data(), epss)
def test_rates_from_the_gram_matrix_equal_the_rates_of_the_tokens(data, eps):
    """The batch scope (rates from ZᵀZ, as summed over ranks) equals the token form."""
    Z, _ = data.draw(token_sets(batch=(1, 1)))
    U = data.draw(subspace_sets(Z.shape[-1]))
    Z2 = Z[0]
    R, Rc = rates_from_gram(Z2.mT @ Z2, Z2.shape[0], U, eps)  # the d×d form: the literal's rounding bound
    assert close(R, (coding_rate(Z2, eps), literal_coding_rate(Z2, eps)[1]))
    assert close(Rc, (compressed_coding_rate(Z2, U, eps), literal_compressed_coding_rate(Z2, U, eps)[1]))


@core()
@given(token_sets(scales=(-3.0, 2.0)), epss)
def test_closed_form_gradient_of_the_coding_rate_equals_autograd(drawn, eps):
    Z, _ = drawn
    Z = Z.requires_grad_()
    (auto,) = torch.autograd.grad(coding_rate(Z, eps).sum(), Z)
    closed = coding_rate_grad(Z.detach(), eps)
    assert torch.allclose(closed, auto, rtol=1e-6, atol=1e-9 * (1 + float(auto.abs().max())))


@core()
@given(st.data(), epss)
def test_closed_form_gradient_of_the_compressed_rate_equals_autograd(data, eps):
    Z, _ = data.draw(token_sets(scales=(-3.0, 2.0)))
    U = data.draw(subspace_sets(Z.shape[-1]))
    Z = Z.requires_grad_()
    (auto,) = torch.autograd.grad(compressed_coding_rate(Z, U, eps).sum(), Z)
    closed = compressed_coding_rate_grad(Z.detach(), U, eps)
    assert torch.allclose(closed, auto, rtol=1e-6, atol=1e-9 * (1 + float(auto.abs().max())))


@core()
@given(st.data(), epss)
def test_a_step_of_one_over_the_bound_never_increases_the_compressed_rate(data, eps):
    """(E7) with the descent lemma, for any U (overcomplete included) and any token set, scales 1e-6 … 1e4.
    No allowance beyond 1e-12 relative: at scale 1e4 the decrease (~1e-9 on R^c ~ 10) is still resolved
    (an allowance of the literal logdet's rounding, 1e-4 of R^c there, would let any increase pass)."""
    Z, _ = data.draw(token_sets())
    U = data.draw(subspace_sets(Z.shape[-1]))
    kappa = compression_step_size(U, eps, Z.shape[-2])
    before = compressed_coding_rate(Z, U, eps)
    after = compressed_coding_rate(Z - kappa * compressed_coding_rate_grad(Z, U, eps), U, eps)
    assert (after <= before + 1e-12 * (1 + before)).all()


@core()
@given(st.data(), epss, st.floats(0.0, 1.0))
def test_sparse_rate_reduction_is_its_parts(data, eps, lam):
    Z, _ = data.draw(token_sets())
    U = data.draw(subspace_sets(Z.shape[-1]))
    l0 = (Z != 0).sum((-2, -1)).to(Z.dtype)  # (not lam * an int tensor: that is float32)
    expected = lam * l0 + compressed_coding_rate(Z, U, eps) - coding_rate(Z, eps)
    assert torch.allclose(sparse_rate_reduction(Z, U, eps, lam), expected, rtol=1e-12, atol=1e-9)
