"""Properties of the rate functions (MATH.md E1–E6), in float64 with drawn shapes and scales."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from srr.linalg import logdet_identity_plus
from srr.rates import (coding_rate, coding_rate_grad, compressed_coding_rate, compressed_coding_rate_grad,
                       crate_vis_compressed_coding_rate, rate_reduction, sparse_rate_reduction, sparsity)

f64 = torch.float64


def tokens(seed, shape, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=f64)


def orthonormal_subspaces(seed, d, K):
    """An orthonormal basis of R^d split into K blocks of p = d // K columns: (K, d, p)."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))[0]
    p = d // K
    return Q[:, : K * p].reshape(d, K, p).permute(1, 0, 2)


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def naive_coding_rate(Z, eps):
    """Literal (E1): the d×d logdet, no Sylvester switch, no Cholesky."""
    N, d = Z.shape[-2:]
    return 0.5 * torch.logdet(torch.eye(d, dtype=Z.dtype) + d / (N * eps**2) * Z.mT @ Z)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 10))
seeds = st.integers(0, 2**31 - 1)
scales = st.floats(1e-2, 1e2)
epss = st.floats(0.05, 2.0)


@given(shapes, seeds, scales, epss)
def test_coding_rate_is_nonnegative_and_matches_literal_formula(shape, seed, scale, eps):
    Z = tokens(seed, shape, scale)
    R = coding_rate(Z, eps)
    assert R.shape == shape[:1]
    assert (R >= -1e-12).all()
    assert rel(R, naive_coding_rate(Z, eps)) < 1e-9


@given(shapes, seeds, epss)
def test_coding_rate_is_invariant_to_rotations_of_features(shape, seed, eps):
    Z = tokens(seed, shape)
    Q = torch.linalg.qr(tokens(seed + 1, (shape[2], shape[2])))[0]
    assert rel(coding_rate(Z @ Q, eps), coding_rate(Z, eps)) < 1e-10


@given(st.integers(1, 12), st.integers(1, 12), seeds, epss)
def test_small_and_large_gram_agree(N, d, seed, eps):
    """Sylvester: ½logdet(I_d + αZᵀZ) = ½logdet(I_N + αZZᵀ)."""
    Z = tokens(seed, (N, d))
    alpha = d / (N * eps**2)
    by_features = 0.5 * logdet_identity_plus(Z.mT @ Z, alpha)
    by_tokens = 0.5 * logdet_identity_plus(Z @ Z.mT, alpha)
    assert rel(by_features, by_tokens) < 1e-10
    assert rel(coding_rate(Z, eps), by_tokens) < 1e-10


@given(shapes, seeds, st.floats(1.01, 10.0))
def test_coding_rate_grows_with_scale(shape, seed, factor):
    Z = tokens(seed, shape)
    assert (coding_rate(factor * Z, 0.5) > coding_rate(Z, 0.5)).all()


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 10), seeds, epss)
def test_compressed_rate_with_coordinate_blocks_is_sum_of_block_rates(K, p, N, seed, eps):
    """U = identity split into K coordinate blocks: R^c = Σ_k R(Z_k) with (E2)'s scale β = p/(Nε²).

    R(Z_k; ε') has scale p/(Nε'²) with p features, so ε' = ε gives exactly β."""
    d = K * p
    Z = tokens(seed, (2, N, d))
    U = torch.eye(d, dtype=f64).reshape(d, K, p).permute(1, 0, 2)
    blocks = sum(coding_rate(Z[..., k * p:(k + 1) * p], eps) for k in range(K))
    assert rel(compressed_coding_rate(Z, U, eps), blocks) < 1e-10
    per = compressed_coding_rate(Z, U, eps, per_subspace=True)
    assert per.shape == (2, K) and rel(per.sum(-1), blocks) < 1e-10


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 12), seeds, scales, epss)
def test_fischer_inequality_at_equal_scale(K, p, N, seed, scale, eps):
    """(E3): for orthonormal blocks, R(Z) ≤ Σ_k ½logdet(I + α A_kᵀA_k) at R's own scale α."""
    d = K * p
    Z = tokens(seed, (N, d), scale)
    U = orthonormal_subspaces(seed, d, K)
    alpha = d / (N * eps**2)
    A = torch.einsum("nd,kdp->knp", Z, U)
    fischer = 0.5 * logdet_identity_plus(A.mT @ A, alpha).sum()
    assert coding_rate(Z, eps) <= fischer + 1e-9 * (1 + fischer.abs())


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), seeds, scales, epss)
def test_rate_reduction_nonnegative_for_mutually_orthogonal_blocks(K, p, per_block, seed, scale, eps):
    """(E3): A_jᵀA_k = 0 for j ≠ k ⇒ ΔR ≥ 0. Each token lives in one subspace only."""
    d = K * p
    U = orthonormal_subspaces(seed, d, K)
    coeffs = tokens(seed + 1, (K, per_block, p), scale)
    Z = torch.cat([coeffs[k] @ U[k].mT for k in range(K)])  # (K·per_block, d)
    assert rate_reduction(Z, U, eps) >= -1e-9


def test_rate_reduction_can_be_negative():
    """(E3) has no sign: one pattern repeated in every subspace, at large scale, gives ΔR < 0."""
    K, p = 4, 2
    d = K * p
    U = torch.eye(d, dtype=f64).reshape(d, K, p).permute(1, 0, 2)
    Z = 100.0 * torch.ones(16, d, dtype=f64)
    assert rate_reduction(Z, U, 0.5) < 0


@given(shapes, seeds, epss)
def test_coding_rate_gradient_is_closed_form(shape, seed, eps):
    """(E5) both through autograd and the closed form."""
    Z = tokens(seed, shape).requires_grad_()
    (g,) = torch.autograd.grad(coding_rate(Z, eps).sum(), Z)
    assert rel(g, coding_rate_grad(Z.detach(), eps)) < 1e-9


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 12), st.integers(1, 8), seeds, epss)
def test_compressed_rate_gradient_is_closed_form(K, p, N, d, seed, eps):
    """(E6): Σ_k β A_k (I + βA_kᵀA_k)⁻¹ U_kᵀ, also for p > N and non-orthonormal U."""
    Z = tokens(seed, (2, N, d)).requires_grad_()
    U = tokens(seed + 7, (K, d, p))
    (g,) = torch.autograd.grad(compressed_coding_rate(Z, U, eps).sum(), Z)
    assert rel(g, compressed_coding_rate_grad(Z.detach(), U, eps)) < 1e-9


def test_gradcheck_and_gradgradcheck():
    Z = tokens(0, (2, 5, 4)).requires_grad_()
    U = tokens(1, (2, 4, 3)).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: coding_rate(z, 0.7), (Z,))
    assert torch.autograd.gradcheck(lambda z, u: compressed_coding_rate(z, u, 0.7), (Z, U))
    assert torch.autograd.gradgradcheck(lambda z, u: compressed_coding_rate(z, u, 0.7), (Z, U))
    assert torch.autograd.gradgradcheck(lambda z: coding_rate(z, 0.7), (Z,))


@given(shapes, seeds)
def test_batched_equals_per_sample(shape, seed):
    Z = tokens(seed, shape)
    U = tokens(seed + 3, (2, shape[2], 2))
    batched = compressed_coding_rate(Z, U, 0.5)
    single = torch.stack([compressed_coding_rate(z, U, 0.5) for z in Z])
    assert rel(batched, single) < 1e-12
    assert rel(coding_rate(Z, 0.5), torch.stack([coding_rate(z, 0.5) for z in Z])) < 1e-12


def test_per_subspace_eps():
    Z, U = tokens(0, (3, 9, 6)), orthonormal_subspaces(0, 6, 3)
    eps = torch.tensor([0.3, 0.5, 0.9], dtype=f64)
    per = compressed_coding_rate(Z, U, eps, per_subspace=True)
    for k in range(3):
        assert rel(per[:, k], compressed_coding_rate(Z, U[k:k + 1], float(eps[k]))) < 1e-12


def test_float32_float64_and_autocast_agree():
    Z, U = tokens(0, (4, 20, 16)), orthonormal_subspaces(0, 16, 4)
    ref = compressed_coding_rate(Z, U, 0.5)
    assert rel(compressed_coding_rate(Z.float(), U.float(), 0.5).double(), ref) < 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        Zb = (Z.float() @ torch.eye(16)).to(torch.bfloat16)  # a bf16 activation, as under autocast
        out = compressed_coding_rate(Zb, U.float(), 0.5)
        assert out.dtype == torch.float32
    assert rel(out.double(), compressed_coding_rate(Zb.double(), U, 0.5)) < 1e-5


def test_ill_conditioned_float32_falls_back_without_nan():
    """A scale at which float32 Cholesky fails still gives the float64 value, and a finite gradient."""
    Z = tokens(0, (3, 64, 32))
    Z[0] *= 1e6
    Z[0, :, 0] *= 1e6  # one direction enormously larger than the rest
    Zf = Z.float().requires_grad_()
    R = coding_rate(Zf, 1e-3)
    assert torch.isfinite(R).all()
    assert rel(R.double(), coding_rate(Z, 1e-3)) < 1e-5
    R.sum().backward()
    assert torch.isfinite(Zf.grad).all()


def test_sparsity_counts():
    Z = torch.tensor([[[0.0, 1.0], [-2.0, 0.0]]], dtype=f64)
    s = sparsity(Z)
    assert s.zero_fraction.item() == 0.5 and s.l0.item() == 2 and s.l1.item() == 3.0


@given(shapes, seeds, st.floats(0.0, 1.0))
def test_sparse_rate_reduction_is_measure_form(shape, seed, lam):
    Z = torch.relu(tokens(seed, shape))
    U = tokens(seed + 1, (2, shape[2], 2))
    expected = lam * sparsity(Z).l0.to(f64) + compressed_coding_rate(Z, U, 0.5) - coding_rate(Z, 0.5)
    assert rel(sparse_rate_reduction(Z, U, 0.5, lam), expected) < 1e-12


def test_crate_vis_convention_is_eps_squared_on_normalized_heads():
    Z, U = tokens(0, (2, 10, 8)), tokens(1, (2, 8, 4))
    A = torch.nn.functional.normalize(torch.einsum("bnd,kdp->bknp", Z, U), dim=-1)
    N, p = 10, 4
    literal = sum(0.5 * torch.logdet(torch.eye(N, dtype=f64) + p / (N * 0.01) * A[:, k] @ A[:, k].mT) for k in range(2))
    assert rel(crate_vis_compressed_coding_rate(Z, U, eps_squared=0.01), literal) < 1e-10


@pytest.mark.parametrize("eps", [0.0, -1.0, math.inf, math.nan])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        coding_rate(tokens(0, (4, 3)), eps)


@pytest.mark.parametrize("lam", [-0.1, math.inf, math.nan, True, "0.1"])
def test_bad_lam_is_rejected_naming_it(lam):
    """λ of (E4) is a finite number >= 0 (inf and NaN were once accepted)."""
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        sparse_rate_reduction(tokens(0, (4, 3)), tokens(1, (1, 3, 2)), 0.5, lam)


def test_bad_inputs_name_the_argument():
    Z = tokens(0, (4, 3))
    with pytest.raises(ValueError, match=r"Z must have shape \(\.\.\., N, d\)"):
        coding_rate(torch.ones(3, dtype=f64), 0.5)
    with pytest.raises(ValueError, match="non-empty"):
        coding_rate(torch.ones(2, 0, 3, dtype=f64), 0.5)
    with pytest.raises(ValueError, match=r"U must have shape \(K, d=3, p\)"):
        compressed_coding_rate(Z, torch.ones(2, 4, 2, dtype=f64), 0.5)
    with pytest.raises(ValueError, match="U must have shape"):
        compressed_coding_rate(Z, torch.ones(3, 2, dtype=f64), 0.5)
    bad = Z.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="Z must be finite"):
        coding_rate(bad, 0.5)
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN/Inf"):
        compressed_coding_rate(bad, torch.ones(1, 3, 2, dtype=f64), 0.5)
    assert torch.isnan(coding_rate(bad, 0.5, check_finite=False))  # opted out: NaN in, NaN out, no exception
    with pytest.raises(ValueError, match="Gram matrix overflows torch.float64"):
        coding_rate(torch.full((3, 4), 1e200, dtype=f64), 0.5)  # finite, but its Gram is not
    assert torch.isfinite(coding_rate(torch.full((3, 4), 1e25), 0.5))  # float32 tokens: the float64 Gram holds
    with pytest.raises(TypeError, match="Z must be a torch.Tensor"):
        coding_rate([[1.0]], 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        coding_rate(torch.ones(2, 2, dtype=torch.int64), 0.5)


@given(m=st.integers(1, 6), n=st.integers(1, 9), seed=st.integers(0, 2**16), scale=st.floats(0.1, 20.0))
def test_compiled_logdet_has_the_value_gradient_and_hessian_of_the_logdet(m, n, seed, scale):
    """``torch.compile``'s logdet (srr.linalg._compiled_logdet: a second-order expansion at a factorised
    point) against ``torch.logdet`` in float64: value, gradient in G and s, and a Hessian-vector product."""
    from srr.linalg import _compiled_logdet

    g = torch.Generator().manual_seed(seed)
    A = torch.randn(2, n, m, generator=g, dtype=torch.float64)
    G = (A.mT @ A).requires_grad_()
    s = torch.tensor([scale, 2 * scale], dtype=torch.float64, requires_grad=True)
    V = torch.randn(2, m, m, generator=g, dtype=torch.float64)
    V = V + V.mT
    exact = lambda G, s: torch.logdet(torch.eye(m, dtype=G.dtype) + s[:, None, None] * G)  # noqa: E731
    values, grads, hvps = [], [], []
    for f in (exact, lambda G, s: _compiled_logdet(G, s, 2.0**-52)):
        value = f(G, s)
        gG, gs = torch.autograd.grad(value.sum(), (G, s), create_graph=True)
        hvp = torch.autograd.grad((gG * V).sum() + gs.sum(), (G, s))
        values.append(value), grads.append((gG, gs)), hvps.append(hvp)
    assert torch.allclose(values[1], values[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(grads[1] + hvps[1], grads[0] + hvps[0]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)
