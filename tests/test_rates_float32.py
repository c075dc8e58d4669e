"""Float32 rates within 1e-4 relative of a float64 reference at every token scale (issue 12, target 3).

The reference takes the float32 inputs upcast to float64 and sums ``log1p(s·λ_i)`` over the Gram
eigenvalues ``λ_i``, read as squared singular values of the tokens (``svdvals``): ``eigvalsh`` of the
float64 Gram is itself off by ``s·eps64·‖G‖`` on each zero eigenvalue, ~1e-3 at the top of the range.
Strategies (``tests/token_strategies.py``): N ≫ d, d ≫ N, square, one token; rank-deficient,
duplicate and zero tokens; scales 1e-6 … 1e4; general, overcomplete and orthonormal subspaces.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from srr.linalg import logdet_identity_plus
from srr.rates import (coding_rate, compressed_coding_rate, crate_vis_compressed_coding_rate, rate_scale,
                       rates_from_gram)
from token_strategies import core, subspace_sets, token_sets

REL = 1e-4
f32, f64 = torch.float32, torch.float64
epss = st.floats(0.25, 2.0)  # scale and ε enter as scale/ε: 1e4/0.25 is s·‖G‖ ≈ 1e13 for these shapes


def reference_half_logdet(X, scale):
    """``½ Σ_i log1p(scale·σ_i(X)²)``: ½ logdet(I + scale·XᵀX) for tokens ``X (..., n, m)``, in float64."""
    return 0.5 * torch.log1p(scale * torch.linalg.svdvals(X.to(f64)) ** 2).sum(-1)


def reference_compressed(Z, U, eps):
    K, _, p = U.shape
    beta = rate_scale(p, Z.shape[-2], eps)
    return reference_half_logdet(Z.to(f64).unsqueeze(-3) @ U.to(f64), beta).sum(-1)  # (..., K) -> (...)


def assert_within(name, value, reference, description):
    err = (value.to(f64) - reference).abs()
    worst = int((err / reference.abs().clamp_min(1e-300)).argmax())
    assert bool((err <= REL * reference.abs()).all()), (
        f"{name} must be within {REL:g} relative of the float64 reference for {description}: expected "
        f"{reference.flatten()[worst].item():.10g}, got {value.flatten()[worst].item():.10g} "
        f"(relative error {(err / reference.abs()).flatten()[worst].item():.2e})")


@core()
@given(token_sets(), epss)
def test_float32_coding_rate_is_within_1e_4_of_float64_at_every_scale(drawn, eps):
    Z64, description = drawn
    Z = Z64.to(f32)
    N, d = Z.shape[-2:]
    R = coding_rate(Z, eps)
    assert R.dtype == f32
    assert_within("R (E1)", R, reference_half_logdet(Z, rate_scale(d, N, eps)), description)


@core()
@given(st.data(), epss)
def test_float32_compressed_coding_rate_is_within_1e_4_of_float64_at_every_scale(data, eps):
    Z64, description = data.draw(token_sets())
    U = data.draw(subspace_sets(Z64.shape[-1])).to(f32)
    Z = Z64.to(f32)
    Rc = compressed_coding_rate(Z, U, eps)
    assert Rc.dtype == f32
    assert_within("R^c (E2)", Rc, reference_compressed(Z, U, eps), f"{description}, U {tuple(U.shape)}")


@core()
@given(st.data(), epss)
def test_rates_from_a_gram_matrix_are_within_1e_4_at_every_scale(data, eps):
    Z64, description = data.draw(token_sets(batch=(1, 1)))
    Z = Z64[0].to(f32)
    U = data.draw(subspace_sets(Z.shape[-1])).to(f32)
    n, d = Z.shape
    G = Z.to(f64).mT @ Z.to(f64)  # as srr.measurement's global_gram forms it
    R, Rc = rates_from_gram(G, n, U, eps)
    assert_within("R (E1) from G", R, reference_half_logdet(Z, rate_scale(d, n, eps)), description)
    assert_within("R^c (E2) from G", Rc, reference_compressed(Z, U, eps), description)


@pytest.mark.parametrize("scale", [1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4])
def test_crate_vis_convention_is_accurate_in_float32(scale):
    g = torch.Generator().manual_seed(0)
    Z = scale * torch.randn(3, 40, 16, generator=g)
    U = torch.linalg.qr(torch.randn(16, 16, generator=g))[0].reshape(16, 4, 4).permute(1, 0, 2).contiguous()
    eps_squared = 1e4 * scale**2  # ε² for R^c of the unit-normalised heads, spanning the series and Cholesky
    A = torch.nn.functional.normalize(Z.to(f64).unsqueeze(-3) @ U.to(f64), dim=-1)
    reference = reference_half_logdet(A, rate_scale(4, 40, eps_squared**0.5)).sum(-1)
    assert_within("crate_vis R^c", crate_vis_compressed_coding_rate(Z, U, eps_squared), reference, f"scale {scale}")


def test_logdet_backward_is_the_inverse_and_twice_differentiable():
    """∂ logdet(I + sG)/∂G = s(I + sG)⁻¹ and ∂/∂s = tr((I + sG)⁻¹G), in both branches (series, Cholesky)."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(3, 7, 4, generator=g, dtype=f64)
    for size in (1e-7, 1.0):  # s·tr G ≈ 1e-5 (series) and ≈ 10 (Cholesky)
        G = (size * X.mT @ X).requires_grad_()
        s = torch.tensor([0.3, 0.5, 0.9], dtype=f64, requires_grad=True)
        def fn(G, s):
            return logdet_identity_plus((G + G.mT) / 2, s)  # the factorisation reads one triangle
        assert torch.autograd.gradcheck(fn, (G, s), check_forward_ad=True)
        assert torch.autograd.gradgradcheck(fn, (G, s))
        dG, ds = torch.autograd.grad(fn(G, s).sum(), (G, s))
        M_inv = torch.linalg.inv(torch.eye(4, dtype=f64) + s[:, None, None] * G.detach())
        torch.testing.assert_close(dG, s.detach()[:, None, None] * M_inv)
        torch.testing.assert_close(ds, (M_inv * G.detach()).sum((-2, -1)))


def test_huge_rank_deficient_float32_gram_stays_finite():
    """A float32 Gram rounded indefinite (Cholesky fails even in float64) is jittered: a finite value and gradient."""
    g = torch.Generator().manual_seed(2)
    A = 1e6 * torch.randn(2, 3, 40, generator=g)  # rank 3 of 40: the float32 Gram's zero eigenvalues are ±1e5
    G = (A.mT @ A).requires_grad_()
    value = logdet_identity_plus(G, 1e3)
    assert value.dtype == f32 and bool(torch.isfinite(value).all()), f"expected a finite logdet, got {value}"
    value.sum().backward()
    assert bool(torch.isfinite(G.grad).all()), "expected a finite gradient in G"


def test_rates_compile_into_one_graph_forward_and_backward():
    Z = torch.randn(2, 9, 8, requires_grad=True)
    U = torch.linalg.qr(torch.randn(8, 8))[0].reshape(8, 2, 4).permute(1, 0, 2).contiguous()

    def rates(z):
        return (compressed_coding_rate(z, U, 0.5) - coding_rate(z, 0.5)).sum()

    compiled = torch.compile(rates, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    (expected,) = torch.autograd.grad(rates(Z), Z)
    (got,) = torch.autograd.grad(compiled(Z), Z)
    torch.testing.assert_close(got, expected)
