"""srr.derive: derived steps equal the closed forms (E5, E6, E10), the Lipschitz step sizes (E7, E11)
guarantee descent and are the real boundary, variants from modified objectives, learnable layers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from srr.derivation import (BoundFraction, DerivedLayer, auto_step_size, coding_rate_step_size, compression_lipschitz,
                        compression_step_size, derive, derive_step, ista_step_size, lipschitz_bound, variants)
from srr.objective import (CodingRate, CompressedCodingRate, L0, L1, LeastSquares, NonNegative, SquaredL2, Term,
                           parse)
from srr.rates import coding_rate, coding_rate_grad, compressed_coding_rate, compressed_coding_rate_grad

f64 = torch.float64


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def tokens(seed, *shape, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=f64)


def lasso(X, Z, D, lam, nonnegative=True):
    """F(Z) = ½‖X − Z Dᵀ‖² + λ‖Z‖₁ (+ ι(Z ≥ 0)) per token set, through the objective itself."""
    obj = LeastSquares() + L1(lam=lam) + (NonNegative() if nonnegative else 0)
    return obj(Z, X=X, D=D)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))


# ---- the derived steps are the closed forms -------------------------------------------------
@given(shape=shapes, scale=st.floats(0.05, 5.0), eps=st.floats(0.2, 2.0), kappa=st.floats(0.01, 2.0),
       seed=st.integers(0, 2**16))
def test_derived_compression_step_is_the_exact_gradient_step(shape, scale, eps, kappa, seed):
    B, N, K, p, extra = shape
    d = K * p + extra - 1
    Z, U = tokens(seed, B, N, d, scale=scale), tokens(seed + 1, K, d, p)
    step = derive_step(CompressedCodingRate(eps=eps), step_size=kappa)
    assert rel(step(Z, U=U), Z - kappa * compressed_coding_rate_grad(Z, U, eps)) < 1e-12


@given(shape=shapes, lam=st.floats(0.0, 1.0), eta=st.floats(0.01, 0.5), seed=st.integers(0, 2**16))
def test_derived_ista_step_reproduces_E10(shape, lam, eta, seed):
    B, N, d = shape[0], shape[1], shape[2] + shape[3]
    X, D = tokens(seed, B, N, d), tokens(seed + 1, d, d, scale=d**-0.5)
    step = derive_step(variants.ista(lam), step_size=eta)
    expected = torch.relu(X + eta * (X - X @ D.mT) @ D - eta * lam)  # (E10), row form
    assert torch.allclose(step(X, X=X, D=D), expected, rtol=1e-12, atol=1e-13)


@given(shape=shapes, lam=st.floats(0.0, 1.0), mu=st.floats(0.0, 1.0), eta=st.floats(0.01, 0.5),
       signed=st.booleans(), seed=st.integers(0, 2**16))
def test_first_step_from_the_input_is_one_matrix_and_equals_the_gradient_step(shape, lam, mu, eta, signed, seed):
    # a token-wise quadratic smooth part makes X − η∇f(X; X, D) linear: X M, M formed on the basis tokens
    B, N, d = shape[0], shape[1], shape[2] + shape[3]
    objective = LeastSquares() + SquaredL2(lam=mu) + L1(lam=lam) + (0 if signed else NonNegative())
    layer = derive(objective, step_size=eta, dim=d, D=tokens(seed + 1, d, d, scale=d**-0.5)).double()
    x = tokens(seed, B, N, d).requires_grad_()
    assert layer.step.linear_at_signal
    fused = layer(x)
    unfused = layer.step.apply(x, layer.objective_params(x))  # Z − η∇f(Z) by torch.func.grad, then prox
    assert rel(fused, unfused) < 1e-12 or unfused.norm() == 0
    cot = tokens(seed + 2, B, N, d)
    g_fused = torch.autograd.grad(fused, [x, layer.D], cot)
    g_unfused = torch.autograd.grad(unfused, [x, layer.D], cot)
    for a, b in zip(g_fused, g_unfused):
        assert rel(a, b) < 1e-10 or b.norm() == 0


@pytest.mark.parametrize("tokens_per_set, fused", [(10, True), (3, False)])
def test_the_step_matrix_is_formed_only_when_it_saves_work(tokens_per_set, fused, monkeypatch):
    # 4 sets of N tokens of width d = 6: M costs 2d³, saves T·d² (T = 4N tokens): fused iff T > 2d
    from srr.derivation.step import Step

    calls = []
    original = Step.step_matrix
    monkeypatch.setattr(Step, "step_matrix", lambda self, *a: calls.append(1) or original(self, *a))
    layer = derive(variants.ista(0.1), step_size=0.1, dim=6).double()
    x = tokens(0, 4, tokens_per_set, 6)
    assert rel(layer(x), layer.step.apply(x, layer.objective_params(x))) < 1e-12
    assert bool(calls) == fused


def test_only_token_wise_quadratic_steps_from_the_input_are_fused():
    assert not derive_step(CompressedCodingRate(eps=0.5), step_size=0.1).linear_at_signal  # couples tokens
    assert not derive_step(CodingRate(eps=0.5) + LeastSquares(), step_size=0.1).linear_at_signal
    ista = derive(variants.ista(0.1), step_size=0.1, dim=6, steps=2).double()
    x = tokens(0, 2, 5, 6)
    params = ista.objective_params(x)
    Z1 = ista.step.apply(x, params)
    # the second step starts from Z₁ ≠ X: the plain gradient step, whatever at_signal says of Z₁
    assert torch.equal(ista.step.apply(Z1, params, at_signal=True), ista.step.apply(Z1, params))
    assert rel(ista(x), ista.step.apply(Z1, params)) < 1e-12


def test_derive_step_batches_over_leading_dimensions():
    Z, U = tokens(0, 2, 3, 7, 8), tokens(1, 2, 8, 3)
    step = derive_step(CompressedCodingRate(eps=0.5), step_size=0.3)
    together = step(Z, U=U)
    one_by_one = torch.stack([torch.stack([step(Z[i, j], U=U) for j in range(3)]) for i in range(2)])
    assert rel(together, one_by_one) < 1e-13


def test_second_order_autograd_through_the_derived_step_is_correct():
    """Training differentiates the derived gradient: the step's own derivatives must be right."""
    Z, U = tokens(0, 2, 4, 3).requires_grad_(), tokens(1, 2, 3, 1).requires_grad_()
    step = derive_step(CompressedCodingRate(eps=0.7), step_size=0.2)
    assert torch.autograd.gradcheck(lambda z, u: step(z, U=u), (Z, U), fast_mode=True)


def test_derive_step_reports_missing_and_unexpected_parameters():
    step = derive_step(CompressedCodingRate(), step_size=0.1)
    with pytest.raises(TypeError, match="missing \\['U'\\]"):
        step(tokens(0, 4, 3))
    with pytest.raises(TypeError, match="unexpected \\['D'\\]"):
        step(tokens(0, 4, 3), U=tokens(1, 1, 3, 1), D=tokens(2, 3, 3))


@pytest.mark.parametrize("bad, error", [(0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                        ("fast", ValueError), (True, TypeError), ([0.1], TypeError)])
def test_derive_step_rejects_bad_step_sizes(bad, error):
    with pytest.raises(error, match="step_size"):
        derive_step(CompressedCodingRate(), step_size=bad)


def test_a_new_term_brings_its_own_bound_and_auto_step_size_uses_it():
    """``Term.lipschitz`` is the only place a bound lives: a term defined here needs no edit elsewhere."""

    @dataclass(frozen=True)
    class Quadratic(Term):  # (c/2)‖Z‖², gradient c·Z, Lipschitz constant c
        c: float = 3.0
        symbol: ClassVar[str] = "Quad"

        def __call__(self, Z):
            return 0.5 * self.c * Z.pow(2).sum((-2, -1))

        def lipschitz(self, N, d, **params):
            return self.c

        def __str__(self):
            return "Quad"

        def latex(self):
            return "Q"

    Z = torch.randn(2, 5, 4, dtype=torch.float64)
    assert lipschitz_bound(Quadratic() + SquaredL2(lam=0.5), Z) == pytest.approx(3.5)
    step = derive_step(Quadratic(), step_size="auto")
    assert torch.allclose(step(Z), torch.zeros_like(Z))  # κ = 1/c lands on the minimiser in one step

    @dataclass(frozen=True)
    class Unbounded(Quadratic):
        def lipschitz(self, N, d, **params):
            return Term.lipschitz(self, N, d, **params)

    with pytest.raises(ValueError, match="no Lipschitz bound is known"):
        lipschitz_bound(Unbounded(), Z)


def test_derive_step_rejects_objectives_without_a_proximal_operator():
    with pytest.raises(ValueError, match="prox"):
        derive_step(LeastSquares() + L1(lam=0.1) + L0(lam=0.1), step_size=0.1)
    with pytest.raises(ValueError, match="coefficient > 0"):
        derive_step(LeastSquares() - L1(lam=0.1), step_size=0.1)


# ---- step sizes from the Lipschitz bounds (E7, E11) --------------------------------------------
@given(K=st.integers(1, 4), p=st.integers(1, 4), N=st.integers(1, 50), eps=st.floats(0.1, 2.0),
       seed=st.integers(0, 2**16))
def test_compression_bound_is_at_most_maths_bound_and_exact_for_orthonormal_blocks(K, p, N, eps, seed):
    d = K * p
    U = tokens(seed, K, d, p)
    beta = p / (N * eps**2)
    maths = beta * sum(float(torch.linalg.matrix_norm(U[k], ord=2)) ** 2 for k in range(K))  # MATH (E7)
    assert compression_lipschitz(U, eps, N) <= maths * (1 + 1e-12)
    Q = torch.linalg.qr(tokens(seed, d, d))[0].reshape(d, K, p).permute(1, 0, 2)
    assert compression_lipschitz(Q, eps, N) == pytest.approx(beta, rel=1e-12)


@given(shape=shapes, scale=st.floats(0.01, 3.0), seed=st.integers(0, 2**16))
def test_compression_bound_bounds_the_hessian(shape, scale, seed):
    """‖∇²R^c(Z)[V]‖ ≤ L‖V‖ at random points and directions: the bound (E7) holds where it is used."""
    B, N, K, p, extra = shape
    d = K * p + extra - 1
    Z, U, V = tokens(seed, N, d, scale=scale), tokens(seed + 1, K, d, p), tokens(seed + 2, N, d)
    grad = torch.func.grad(lambda z: compressed_coding_rate(z, U, 0.5))
    HV = torch.func.jvp(grad, (Z,), (V,))[1]
    assert HV.norm() <= compression_lipschitz(U, 0.5, N) * V.norm() * (1 + 1e-10)


def test_auto_step_sizes_are_the_inverse_bounds():
    Z, U, D = tokens(0, 2, 9, 6), tokens(1, 2, 6, 3), tokens(2, 6, 6)
    assert auto_step_size(CompressedCodingRate(eps=0.5), Z, U=U) == pytest.approx(compression_step_size(U, 0.5, 9))
    assert auto_step_size(-CodingRate(eps=0.5), Z) == pytest.approx(coding_rate_step_size(6, 0.5, 9))
    assert auto_step_size(variants.ista(0.1), Z, X=Z, D=D) == pytest.approx(ista_step_size(D))
    bound = lipschitz_bound(LeastSquares() + SquaredL2(lam=0.3), Z, X=Z, D=D)
    assert bound == pytest.approx(1 / ista_step_size(D) + 0.3)
    step = derive_step(CompressedCodingRate(eps=0.5), step_size="auto")
    assert rel(step(Z, U=U), Z - compression_step_size(U, 0.5, 9) * compressed_coding_rate_grad(Z, U, 0.5)) < 1e-13


def test_a_step_size_function_receives_the_tokens_and_parameters():
    seen = {}

    def kappa(Z, U):
        seen["N"], seen["K"] = Z.shape[-2], U.shape[0]
        return 0.5 * compression_step_size(U, 0.5, Z.shape[-2])

    Z, U = tokens(0, 9, 6), tokens(1, 2, 6, 3)
    out = derive_step(CompressedCodingRate(eps=0.5), step_size=kappa)(Z, U=U)
    assert seen == {"N": 9, "K": 2}
    assert rel(out, derive_step(CompressedCodingRate(eps=0.5), step_size=BoundFraction(0.5))(Z, U=U)) < 1e-14


@dataclass(frozen=True)
class Quartic(Term):
    """A user-defined smooth term ``¼ Σ z⁴`` (its gradient comes from autodiff; no bound is known)."""

    symbol: ClassVar[str] = "Q4"

    def __call__(self, Z):
        return 0.25 * Z.pow(4).sum((-2, -1))

    def __str__(self):
        return "¼‖Z‖₄⁴"

    def latex(self):
        return r"\tfrac14\|Z\|_4^4"


def test_any_smooth_term_derives_but_auto_needs_a_known_bound():
    Z = tokens(0, 3, 4)
    assert rel(derive_step(Quartic(), step_size=0.1)(Z), Z - 0.1 * Z**3) < 1e-14
    with pytest.raises(ValueError, match="no Lipschitz bound"):
        derive_step(Quartic(), step_size="auto")(Z)


# ---- descent below the bounds, failure far above them ----------------------------------------
@given(shape=shapes, scale=st.floats(0.01, 10.0), eps=st.floats(0.2, 2.0), fraction=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**16))
def test_compression_step_below_the_bound_never_increases_compressed_rate(shape, scale, eps, fraction, seed):
    """(E7): κ ≤ 1/L ⇒ R^c(Z − κ∇R^c) ≤ R^c(Z), for every drawn shape, scale and seed."""
    B, N, K, p, extra = shape
    d = K * p + extra - 1
    Z, U = tokens(seed, B, N, d, scale=scale), tokens(seed + 1, K, d, p)
    step = derive_step(CompressedCodingRate(eps=eps), step_size=BoundFraction(fraction))
    before, after = compressed_coding_rate(Z, U, eps), compressed_coding_rate(step(Z, U=U), U, eps)
    assert (after <= before + 1e-12 * before.abs() + 1e-300).all()


def _top_direction(U, eps, N):
    """The top eigenvector of Σ_k β_k U_k U_kᵀ: the direction in which the bound (E7) is attained."""
    K, d, p = U.shape
    M = (p / (N * eps**2)) * torch.einsum("kip,kjp->ij", U, U)
    return torch.linalg.eigh(M)[1][:, -1]


@given(K=st.integers(1, 3), p=st.integers(1, 3), N=st.integers(2, 20), eps=st.floats(0.3, 2.0),
       fraction=st.sampled_from([2.2, 4.0, 10.0]), seed=st.integers(0, 2**16))
def test_compression_step_far_above_the_bound_increases_compressed_rate(K, p, N, eps, fraction, seed):
    """Near Z = 0, R^c ≈ ½ Σ β_k‖Z U_k‖² and its curvature along the top direction is exactly L: there a
    step of c/L multiplies Z by (1 − c), so any c > 2 raises R^c. The bound is the boundary up to the
    descent lemma's own factor 2 (1.8/L still descends on the same tokens)."""
    d = K * p + 1
    U = tokens(seed, K, d, p)
    Z = 1e-4 * eps * tokens(seed + 1, N, 1) @ _top_direction(U, eps, N)[None, :]  # rank one, small
    Rc = lambda z: float(compressed_coding_rate(z, U, eps))  # noqa: E731
    above = derive_step(CompressedCodingRate(eps=eps), step_size=BoundFraction(fraction))(Z, U=U)
    below = derive_step(CompressedCodingRate(eps=eps), step_size=BoundFraction(1.8))(Z, U=U)
    assert Rc(above) > Rc(Z) * (1 + 0.5 * ((fraction - 1) ** 2 - 1))
    assert Rc(below) < Rc(Z)


@given(B=st.integers(1, 3), N=st.integers(1, 8), d=st.integers(1, 8), m_extra=st.integers(0, 4),
       lam=st.floats(0.0, 1.0), fraction=st.floats(0.05, 1.0), scale=st.floats(0.1, 10.0), seed=st.integers(0, 2**16))
def test_ista_step_below_the_bound_never_increases_the_lasso_objective(B, N, d, m_extra, lam, fraction, scale, seed):
    """(E11): from a non-negative start a₀ (here the codes a₀ = |X| padded), η ≤ 1/‖D‖₂² ⇒ F(a₁) ≤ F(a₀)."""
    m = d + m_extra
    X, D = tokens(seed, B, N, d, scale=scale), tokens(seed + 1, d, m, scale=m**-0.5)
    a0 = tokens(seed + 2, B, N, m, scale=scale).abs()
    eta = fraction * ista_step_size(D)
    a1 = derive_step(variants.ista(lam), step_size=eta)(a0, X=X, D=D)
    before, after = lasso(X, a0, D, lam), lasso(X, a1, D, lam)
    assert (after <= before + 1e-12 * before.abs()).all()


@given(d=st.integers(2, 8), sigma=st.floats(0.05, 0.5), rho=st.floats(0.0, 0.01), fraction=st.sampled_from([2.5, 4.0]),
       seed=st.integers(0, 2**16))
def test_ista_step_far_above_the_bound_increases_the_lasso_objective(d, sigma, rho, fraction, seed):
    """D = σ w wᵀ + (σ/2)(I − w wᵀ) with w > 0, x = w, a₀ = x: the step moves along w, inside the
    orthant, and overshoots the minimiser w/σ by (c − 1) times the distance when η = c/‖D‖²: for c > 2
    the residual grows, so F rises — the non-negativity does not save a step above the bound."""
    w = tokens(seed, d).abs() + 0.1
    w = w / w.norm()
    P = torch.outer(w, w)
    D = sigma * P + 0.5 * sigma * (torch.eye(d, dtype=f64) - P)
    X = w[None, None, :]  # (1, 1, d)
    lam = rho * sigma**2  # a threshold ηλ = cρ small against the step along w
    eta = fraction * ista_step_size(D)
    a1 = derive_step(variants.ista(lam), step_size=eta)(X, X=X, D=D)
    assert float(lasso(X, a1, D, lam)) > float(lasso(X, X, D, lam))
    a_ok = derive_step(variants.ista(lam), step_size=ista_step_size(D))(X, X=X, D=D)
    assert float(lasso(X, a_ok, D, lam)) <= float(lasso(X, X, D, lam))


# ---- variants from modified objectives --------------------------------------------------------
def test_soft_threshold_ista_is_ista_without_the_non_negativity():
    X, D, eta, lam = tokens(0, 2, 9, 6), tokens(1, 6, 6, scale=0.4), 0.1, 0.3
    out = derive_step(variants.soft_threshold_ista(lam), step_size=eta)(X, X=X, D=D)
    v = X + eta * (X - X @ D.mT) @ D
    assert rel(out, torch.sign(v) * torch.relu(v.abs() - eta * lam)) < 1e-14
    assert (out < 0).any() and (out == 0).any()  # signed and sparse codes


def test_elastic_net_ista_adds_a_shrinkage():
    X, D, eta, lam, mu = tokens(0, 2, 9, 6), tokens(1, 6, 6, scale=0.4), 0.1, 0.3, 0.5
    out = derive_step(variants.elastic_net_ista(lam, mu), step_size=eta)(X, X=X, D=D)
    assert rel(out, torch.relu(X + eta * (X - X @ D.mT) @ D - eta * mu * X - eta * lam)) < 1e-14


def test_per_head_eps_compression_is_the_sum_of_single_head_steps():
    Z, U, eps, kappa = tokens(0, 2, 9, 6), tokens(1, 3, 6, 2), (0.3, 0.6, 1.2), 0.2
    out = derive_step(variants.per_head_compression(eps), step_size=kappa)(Z, U=U)
    grads = sum(compressed_coding_rate_grad(Z, U[k:k + 1], eps[k]) for k in range(3))
    assert rel(out, Z - kappa * grads) < 1e-13
    assert rel(out, derive_step(CompressedCodingRate(eps=0.6), step_size=kappa)(Z, U=U)) > 1e-3


@given(N=st.integers(2, 12), d=st.integers(1, 8), scale=st.floats(0.05, 5.0), fraction=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**16))
def test_expansion_step_on_R_is_E5_and_never_decreases_R_below_the_bound(N, d, scale, fraction, seed):
    Z = tokens(seed, 2, N, d, scale=scale)
    kappa = fraction * coding_rate_step_size(d, 0.5, N)
    out = derive_step(variants.expansion(0.5), step_size=kappa)(Z)
    assert rel(out, Z + kappa * coding_rate_grad(Z, 0.5)) < 1e-12
    assert (coding_rate(out, 0.5) >= coding_rate(Z, 0.5) * (1 - 1e-12)).all()


def test_rate_reduction_step_compresses_within_and_expands_overall():
    Z, U, kappa = tokens(0, 2, 9, 6), tokens(1, 2, 6, 3), 0.05
    out = derive_step(variants.rate_reduction(0.5), step_size=kappa)(Z, U=U)
    expected = Z - kappa * (compressed_coding_rate_grad(Z, U, 0.5) - coding_rate_grad(Z, 0.5))
    assert rel(out, expected) < 1e-13


def test_a_variant_is_a_few_lines_of_user_code():
    """The guide's example: a new layer from a modified objective, parsed from text."""
    layer = derive(parse("LeastSquares + 0.05*L2 + 0.1*L1"), step_size="auto", dim=8)
    x = tokens(0, 2, 5, 8).float()
    y = layer(x)
    assert y.shape == x.shape and (y < 0).any()  # no NonNeg term: signed codes


# ---- the derived module --------------------------------------------------------------------
def test_derived_compression_layer_owns_orthonormal_subspaces_and_steps():
    layer = derive(CompressedCodingRate(eps=0.5), step_size=0.1, dim=12, heads=3, head_dim=4)
    U = layer.subspaces
    assert isinstance(U, torch.nn.Parameter) and U.shape == (3, 12, 4)
    flat = U.detach().permute(1, 0, 2).reshape(12, 12)
    assert torch.allclose(flat.mT @ flat, torch.eye(12), atol=1e-5)  # orthonormal, mutually orthogonal
    x = torch.randn(2, 7, 12)
    assert torch.allclose(layer(x), x - 0.1 * compressed_coding_rate_grad(x, U, 0.5), atol=1e-6)
    with pytest.raises(AttributeError, match="dictionary"):
        layer.dictionary


def test_derived_ista_layer_has_the_public_dictionary_init_and_computes_E10():
    layer = derive(LeastSquares() + L1(lam=0.1) + NonNegative(), step_size=0.1, dim=64)
    D = layer.dictionary
    assert D.shape == (64, 64) and D.abs().max() <= (6 / 64) ** 0.5  # kaiming_uniform_, a=0
    x = torch.randn(3, 5, 64)
    expected = torch.relu(x + 0.1 * (x - x @ D.mT) @ D - 0.01)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert (layer(x) >= 0).all()


def test_derived_layer_options():
    D = tokens(0, 6, 18, scale=0.2)
    layer = derive(variants.ista(0.1), step_size=0.1, dim=6, code_dim=18, start="zero", steps=3, D=D, frozen=("D",))
    assert "D" in dict(layer.named_buffers()) and not list(layer.parameters())
    x = tokens(1, 2, 4, 6)
    a, step = torch.zeros(2, 4, 18, dtype=f64), derive_step(variants.ista(0.1), step_size=0.1)
    for _ in range(3):
        a = step(a, X=x, D=D)
    assert rel(layer(x), a) < 1e-14
    with pytest.raises(ValueError, match="heads"):
        derive(CompressedCodingRate(), step_size=0.1, dim=6)
    with pytest.raises(ValueError, match="start"):
        derive(variants.ista(), step_size=0.1, dim=6, start="middle")
    with pytest.raises(ValueError, match="code_dim"):
        derive(variants.ista(), step_size=0.1, dim=6, code_dim=12)
    with pytest.raises(TypeError, match="unexpected initial"):
        derive(variants.ista(), step_size=0.1, dim=6, U=torch.zeros(1, 6, 1))
    with pytest.raises(ValueError, match="learn_step_size"):
        derive(variants.ista(), step_size="auto", dim=6, learn_step_size=True)
    with pytest.raises(ValueError, match="learn_lam"):
        derive(CompressedCodingRate(), step_size=0.1, dim=6, heads=2, learn_lam=True)


def test_learnable_lambda_and_step_size_enter_the_step_and_get_gradients():
    x = torch.randn(2, 5, 8)
    layer = derive(variants.ista(0.1), step_size=0.1, dim=8, learn_lam=True, learn_step_size=True)
    with torch.no_grad():
        layer.lam.fill_(0.3)
        layer.step_size.fill_(0.2)
    fixed = derive(variants.ista(0.3), step_size=0.2, dim=8, D=layer.D)
    assert torch.allclose(layer(x), fixed(x), atol=1e-6)
    layer(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (layer.lam, layer.step_size, layer.D))


def test_training_a_stack_of_derived_layers_lowers_the_loss():
    """Second-order autograd: the loss differentiates the derived gradients with respect to U and D."""
    torch.manual_seed(0)
    d, N = 8, 6
    model = torch.nn.Sequential(
        derive(CompressedCodingRate(eps=0.5), step_size=0.2, dim=d, heads=2),
        derive(variants.ista(0.05), step_size=0.1, dim=d),
        derive(CompressedCodingRate(eps=0.5), step_size=0.2, dim=d, heads=2),
        derive(variants.ista(0.05), step_size=0.1, dim=d, learn_lam=True),
    )
    x = torch.randn(16, N, d)
    target = torch.relu(torch.randn(16, N, d))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = (model(x) - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_derived_layer_is_a_module_with_a_readable_repr():
    layer = derive(CompressedCodingRate(eps=0.5), dim=8, heads=2)
    assert isinstance(layer, DerivedLayer) and "step_size=auto" in repr(layer) and "R^c" in repr(layer)
    assert layer.load_state_dict(layer.state_dict()) is not None


def test_the_guides_example_runs_and_is_under_ten_lines():
    """docs/guide-derive.md opens with a new layer derived from a modified objective in < 10 lines."""
    import pathlib
    import re

    guide = (pathlib.Path(__file__).parents[1] / "docs" / "guide-derive.md").read_text()
    code = re.search(r"```python\n(.*?)```", guide, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip() and not line.startswith("#")]) < 10
    namespace: dict = {}
    exec(compile(code, "guide-derive.md", "exec"), namespace)  # noqa: S102
    z, x, layer = namespace["z"], namespace["x"], namespace["layer"]
    D = layer.dictionary.detach()
    eta = ista_step_size(D) / (1 + 0.05 * ista_step_size(D))  # "auto": 1/(‖D‖² + 0.05)
    v = x - eta * ((x @ D.mT - x) @ D + 0.05 * x)
    assert torch.allclose(z, torch.sign(v) * torch.relu(v.abs() - eta * 0.1), atol=1e-5)
