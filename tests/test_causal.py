"""Causal rates and layers (MATH.md §8): the terms E14 and E16, their derived steps, the fast causal layers
(CRATE-GPT's attention E15, the exact causal step E14, ToST's causal TSSA E16) against the derived steps
and the public code's formulas, and the properties of issue 23: causality, closed-form gradients, descent
per position at κ_t ≤ 1/L_t (and ascent well above 2/L_t), and the last position equal to the non-causal step."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from srr import derive
from srr.derivation import BoundFraction, derive_step, lipschitz_bound, position_lipschitz_bound
from srr.layers import CausalExactCompression, CausalMSSA, CausalTSSA, check
from srr.layers import causal as causal_layers
from srr.objective import (CausalCompressedCodingRate, CausalVariationalCompressedCodingRate, CompressedCodingRate,
                           L1, Objective, parse)
from srr.objective.causal import (causal_compressed_coding_rate, causal_compressed_coding_rate_grad,
                                  causal_lipschitz, causal_variational_compressed_coding_rate,
                                  causal_variational_compressed_coding_rate_grad)
from srr.rates import compressed_coding_rate, compressed_coding_rate_grad, variational_compressed_coding_rate_grad

f64 = torch.float64


def tokens(seed, *shape, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=f64)


def membership(seed, *shape, kind="soft"):
    logits = tokens(seed, *shape, scale=2.0)
    if kind == "soft":
        return torch.softmax(logits, -1)
    return F.one_hot(logits.argmax(-1), shape[-1]).to(f64)


def orthonormal(K, d, p, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))[0][:, :K * p]  # (d, K·p)
    return Q.unflatten(1, (K, p)).permute(1, 0, 2).contiguous()  # (K, d, p)


def set_orthonormal(layer, seed=0):
    U = orthonormal(layer.heads, layer.dim, layer.head_dim, seed).to(layer.c_attn.weight.dtype)
    with torch.no_grad():
        layer.c_attn.weight.copy_(U.transpose(1, 2).flatten(0, 1))  # W_k = U_kᵀ
    return layer


# ---- the terms (E14, E16) ------------------------------------------------------------------------
def test_causal_terms_print_parse_and_evaluate_their_functions():
    rc, var = CausalCompressedCodingRate(eps=0.3), CausalVariationalCompressedCodingRate(eps=0.7)
    assert str(rc) == "R^c_causal(Z; U, ε=0.3)" and str(var) == "R^c_var,causal(Z; U, Π, ε=0.7)"
    assert rc.latex().startswith(r"R^c_{\mathrm{causal}}(\mathbf{Z}") and r"\boldsymbol{\Pi}" in var.latex()
    obj = 2 * rc - var + 0.1 * L1()
    assert parse(obj.spec()) == obj and obj.spec() == "2*RcCausal(eps=0.3) - RcVarCausal(eps=0.7) + 0.1*L1"
    assert parse("CausalCompressedCodingRate(eps=0.3)") == Objective.of(rc)
    assert rc.requires == ("U",) and var.requires == ("U", "Pi")
    Z, U, Pi = tokens(0, 2, 5, 6), tokens(1, 3, 6, 2), membership(2, 2, 5, 3)
    assert torch.equal(rc(Z, U=U), causal_compressed_coding_rate(Z, U, 0.3))
    assert torch.equal(var(Z, U=U, Pi=Pi), causal_variational_compressed_coding_rate(Z, U, Pi, 0.7))
    assert obj(Z, U=U, Pi=Pi).shape == (2,)


@pytest.mark.parametrize("bad", [0.0, -1.0, (0.3, 0.5), float("nan")])
def test_causal_terms_take_one_positive_eps(bad):
    with pytest.raises((ValueError, TypeError), match="eps"):
        CausalCompressedCodingRate(eps=bad)


def test_context_must_have_the_tokens_shape():
    Z, U = tokens(0, 5, 6), tokens(1, 3, 6, 2)
    with pytest.raises(ValueError, match=r"context must be a tensor of Z's shape \(5, 6\)"):
        causal_compressed_coding_rate(Z, U, 0.5, context=Z[:4])


def test_the_causal_value_is_each_prefix_rate():
    """At ``context = Z`` position t's value is R^c(Z_{≤t}) with β_t = p/(tε²) (E2 on the prefix)."""
    Z, U = tokens(0, 2, 6, 5), tokens(1, 2, 5, 3)
    per = causal_compressed_coding_rate(Z, U, 0.4, per_position=True)
    for t in range(1, 7):
        torch.testing.assert_close(per[:, t - 1], compressed_coding_rate(Z[:, :t], U, 0.4), rtol=1e-12, atol=0)


def test_the_causal_variational_value_is_E12_on_each_prefix():
    from srr.rates import variational_compressed_coding_rate

    Z, U, Pi = tokens(0, 2, 6, 5), tokens(1, 2, 5, 3), membership(2, 2, 6, 2)
    per = causal_variational_compressed_coding_rate(Z, U, Pi, 0.4, per_position=True)
    for t in range(1, 7):
        ref = variational_compressed_coding_rate(Z[:, :t], U, Pi[:, :t], 0.4)
        torch.testing.assert_close(per[:, t - 1], ref, rtol=1e-12, atol=0)


def test_lipschitz_per_position_is_E7_at_each_prefix_length():
    from srr.rates import compression_lipschitz

    U = tokens(1, 3, 6, 2)
    L = CausalCompressedCodingRate(eps=0.5).lipschitz_per_position(7, 6, U=U)
    assert L.shape == (7,) and L.dtype == f64
    for t in range(1, 8):
        assert L[t - 1].item() == pytest.approx(compression_lipschitz(U, 0.5, t), rel=1e-12)
    Z = tokens(0, 7, 6)
    assert lipschitz_bound(CausalCompressedCodingRate(0.5), Z, U=U) == pytest.approx(L[0].item())
    both = position_lipschitz_bound(CausalCompressedCodingRate(0.5) + 2 * CompressedCodingRate(0.5), Z, U=U)
    torch.testing.assert_close(both, L + 2 * compression_lipschitz(U, 0.5, 7))


# ---- the derived steps ----------------------------------------------------------------------------
sizes = st.tuples(st.integers(1, 2), st.integers(1, 9), st.integers(1, 3), st.integers(1, 3), st.integers(0, 5))


@settings(max_examples=15)
@given(sizes, st.sampled_from([0.3, 1.0]), st.sampled_from([0.3, 1.0, 4.0]))
def test_derived_E14_gradient_is_the_closed_form(size, eps, scale):
    B, T, K, p, seed = size
    d = K * p + 1
    Z, U = tokens(seed, B, T, d, scale=scale), tokens(seed + 1, K, d, p)
    g = derive_step(CausalCompressedCodingRate(eps), 0.1).gradient(Z, U=U)
    torch.testing.assert_close(g, causal_compressed_coding_rate_grad(Z, U, eps), rtol=1e-9, atol=1e-12)


@settings(max_examples=15)
@given(sizes, st.sampled_from([0.3, 1.0]), st.sampled_from(["soft", "hard"]))
def test_derived_E16_gradient_is_the_closed_form(size, eps, kind):
    B, T, K, p, seed = size
    d = K * p + 1
    Z, U, Pi = tokens(seed, B, T, d), tokens(seed + 1, K, d, p), membership(seed + 2, B, T, K, kind=kind)
    g = derive_step(CausalVariationalCompressedCodingRate(eps), 0.1).gradient(Z, U=U, Pi=Pi)
    torch.testing.assert_close(g, causal_variational_compressed_coding_rate_grad(Z, U, Pi, eps), rtol=1e-9,
                               atol=1e-12)


def test_E14_closed_form_is_row_t_of_E6_on_each_prefix():
    Z, U = tokens(0, 2, 7, 6), tokens(1, 3, 6, 2)
    g = causal_compressed_coding_rate_grad(Z, U, 0.5)
    for t in range(1, 8):
        torch.testing.assert_close(g[:, t - 1], compressed_coding_rate_grad(Z[:, :t], U, 0.5)[:, -1])


@settings(max_examples=10)
@given(sizes)
def test_at_the_last_position_the_causal_step_is_the_non_causal_one(size):
    """Row T of the causal steps equals row T of the steps on the whole sequence (E6, E13)."""
    B, T, K, p, seed = size
    d = K * p
    Z, U, Pi = tokens(seed, B, T, d), tokens(seed + 1, K, d, p), membership(seed + 2, B, T, K)
    causal = derive_step(CausalCompressedCodingRate(0.5), 0.3)(Z, U=U)
    torch.testing.assert_close(causal[:, -1], (Z - 0.3 * compressed_coding_rate_grad(Z, U, 0.5))[:, -1])
    causal = derive_step(CausalVariationalCompressedCodingRate(0.5), 0.3)(Z, U=U, Pi=Pi)
    full = Z - 0.3 * variational_compressed_coding_rate_grad(Z, U, Pi, 0.5)
    torch.testing.assert_close(causal[:, -1], full[:, -1])


def test_auto_step_size_is_per_position_and_fraction_scales_it():
    Z, U = tokens(0, 2, 5, 6), tokens(1, 3, 6, 2)
    step = derive_step(CausalCompressedCodingRate(0.5), "auto")
    kappa = step.resolve_step_size(Z, {"U": U})
    assert kappa.shape == (5, 1)
    torch.testing.assert_close(kappa.squeeze(-1), 1 / causal_lipschitz(U, 0.5, 5))
    half = derive_step(CausalCompressedCodingRate(0.5), BoundFraction(0.5)).resolve_step_size(Z, {"U": U})
    torch.testing.assert_close(half, kappa / 2)


def test_training_through_the_derived_step_differentiates_through_the_prefixes():
    """The stop-gradient is for the step's own gradient only: d(step)/d(earlier tokens) is not lost."""
    Z, U = tokens(0, 1, 5, 6).requires_grad_(), tokens(1, 3, 6, 2)
    out = derive_step(CausalCompressedCodingRate(0.5), 0.3)(Z, U=U)
    (gZ,) = torch.autograd.grad(out[0, -1].sum(), Z)
    assert gZ[0, :-1].abs().sum() > 0  # row T depends on the prefix through S_{k,T}
    assert torch.equal(gZ[0, :-1] * 0, torch.zeros_like(gZ[0, :-1]))
    f = lambda z: derive_step(CausalCompressedCodingRate(0.5), 0.3)(z, U=U)[0, -1].sum()  # noqa: E731
    assert torch.autograd.gradcheck(f, (tokens(2, 1, 4, 6).requires_grad_(),))


def test_derive_builds_a_causal_block_whose_update_is_the_exact_layers():
    layer = derive(CausalCompressedCodingRate(0.5), "auto", dim=6, heads=3, output="update").double()
    exact = CausalExactCompression(6, heads=3, eps=0.5, step_size="auto").double()
    with torch.no_grad():
        exact.c_attn.weight.copy_(layer.U.transpose(1, 2).flatten(0, 1))
    x = tokens(0, 2, 8, 6)
    torch.testing.assert_close(layer(x), exact(x), rtol=1e-10, atol=1e-13)


# ---- the layers -----------------------------------------------------------------------------------
def layers():
    return {
        "mssa": lambda: CausalMSSA(12, heads=3),
        "exact": lambda: CausalExactCompression(12, heads=3, step_size=0.3),
        "exact_auto": lambda: CausalExactCompression(12, heads=3, step_size="auto"),
        "tssa": lambda: CausalTSSA(12, heads=3, block_size=16),
        "tssa_bias": lambda: CausalTSSA(12, heads=3, block_size=16, bias=True),
        "tssa_tied": lambda: CausalTSSA(12, heads=3, block_size=16, output="tied", eps=0.7),
    }


def _randomise(layer):
    g = torch.Generator().manual_seed(5)
    if isinstance(layer, CausalTSSA):
        with torch.no_grad():
            layer.temp.copy_(1 + torch.rand(layer.temp.shape, generator=g))
            layer.denom_bias.copy_(0.3 * torch.randn(layer.denom_bias.shape, generator=g))
    return layer


@pytest.mark.parametrize("name", list(layers()))
def test_fast_layers_match_their_reference_forward_and_backward(name):
    layer = _randomise(layers()[name]())
    tol = 1e-7 if name in ("tssa", "tssa_bias") else 1e-11  # ToST's mass floor 1e-8 against E16's exact n_{k,t}
    report = check(layer, tokens=11)
    assert report.ok(tol), str(report)
    assert check(layer, tokens=11, dtype=torch.float32).ok(5e-5)


@pytest.mark.parametrize("name", list(layers()))
@settings(max_examples=8)
@given(st.integers(1, 12), st.integers(0, 1000))
def test_fast_layers_are_causal(name, T, seed):
    """Changing the tokens after t leaves the outputs up to t bit-identical, fused and reference."""
    layer = _randomise(layers()[name]()).double().eval()
    x = tokens(seed, 2, T, 12)
    t = seed % T
    y = x.clone()
    y[:, t + 1:] = tokens(seed + 1, 2, T - t - 1, 12, scale=3.0)
    for backend in ("fused", "reference"):
        layer.backend = backend
        assert torch.equal(layer(x)[:, :t + 1], layer(y)[:, :t + 1]), backend


@settings(max_examples=8)
@given(st.integers(1, 10), st.integers(0, 1000))
def test_derived_steps_are_causal(T, seed):
    x, U, Pi = tokens(seed, 2, T, 6), tokens(seed + 1, 3, 6, 2), membership(seed + 2, 2, T, 3)
    t = seed % T
    y, Pj = x.clone(), Pi.clone()
    y[:, t + 1:] = tokens(seed + 3, 2, T - t - 1, 6, scale=3.0)
    Pj[:, t + 1:] = membership(seed + 4, 2, T - t - 1, 3)
    step = derive_step(CausalCompressedCodingRate(0.5), "auto")
    assert torch.equal(step(x, U=U)[:, :t + 1], step(y, U=U)[:, :t + 1])
    step = derive_step(CausalVariationalCompressedCodingRate(0.5), "auto")
    assert torch.equal(step(x, U=U, Pi=Pi)[:, :t + 1], step(y, U=U, Pi=Pj)[:, :t + 1])


def test_the_chunked_exact_step_equals_the_one_chunk_step(monkeypatch):
    layer = CausalExactCompression(8, heads=2, step_size="auto").double()
    x = tokens(0, 2, 13, 8).requires_grad_()
    whole = layer(x)
    (g_whole,) = torch.autograd.grad(whole.square().sum(), x)
    monkeypatch.setattr(causal_layers, "GRAM_CHUNK_ELEMENTS", 2 * 2 * 16 * 3)  # chunks of 3 positions
    chunked = layer(x)
    (g_chunked,) = torch.autograd.grad(chunked.square().sum(), x)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_chunked, g_whole, rtol=1e-12, atol=1e-14)


def test_the_prefix_sum_is_cumsum_to_the_bit_and_differentiable_twice():
    X = tokens(0, 2, 7, 3, 3).requires_grad_()
    assert torch.equal(causal_layers._PrefixSum.apply(X), X.cumsum(-3))
    assert torch.autograd.gradcheck(causal_layers._PrefixSum.apply, (X,))
    assert torch.autograd.gradgradcheck(causal_layers._PrefixSum.apply, (X,))


# ---- descent per position ------------------------------------------------------------------------
def _prefix_rates_exact(layer, x, out):
    U = layer.subspaces.detach()
    before = causal_compressed_coding_rate(x, U, layer.eps, context=x, per_position=True)
    after = causal_compressed_coding_rate(x + out, U, layer.eps, context=x, per_position=True)
    return before, after


def _prefix_rates_tssa(layer, x, out):
    U, Pi = layer.subspaces.detach(), layer.membership(x).detach()
    rate = lambda z: causal_variational_compressed_coding_rate(z, U, Pi, layer.eps, context=x,  # noqa: E731
                                                                per_position=True)
    return rate(x), rate(x + out)


@settings(max_examples=12)
@given(st.integers(1, 10), st.integers(0, 1000), st.sampled_from([0.01, 1.0, 5.0]), st.sampled_from([1.0, 0.5]))
def test_each_prefix_rate_does_not_increase_in_its_own_token_at_the_bound(T, seed, scale, fraction):
    """κ_t ≤ 1/L_t (E14, E16): the derived steps and the exact and tied TSSA layers never raise position t's
    prefix rate through z_t."""
    x, U, Pi = tokens(seed, 2, T, 6, scale=scale), tokens(seed + 1, 3, 6, 2), membership(seed + 2, 2, T, 3)
    rates = {"E14": lambda z: causal_compressed_coding_rate(z, U, 0.5, context=x, per_position=True),
             "E16": lambda z: causal_variational_compressed_coding_rate(z, U, Pi, 0.5, context=x, per_position=True)}
    steps = {"E14": derive_step(CausalCompressedCodingRate(0.5), BoundFraction(fraction))(x, U=U),
             "E16": derive_step(CausalVariationalCompressedCodingRate(0.5), BoundFraction(fraction))(x, U=U, Pi=Pi)}
    for name, rate in rates.items():
        before, after = rate(x), rate(steps[name])
        assert bool((after <= before + 1e-12 * before.abs().clamp_min(1)).all()), (name, after - before)
    exact = CausalExactCompression(6, heads=3, eps=0.5, step_size="auto").double()
    before, after = _prefix_rates_exact(exact, x, exact(x).detach())
    assert bool((after <= before + 1e-12 * before.abs().clamp_min(1)).all())
    tied = _randomise(CausalTSSA(6, heads=3, block_size=16, output="tied", eps=0.5)).double()
    tied.step_size = fraction / causal_lipschitz(tied.subspaces.detach(), 0.5, 1)[0].item()  # κ ≤ 1/L_1 ≤ 1/L_t
    before, after = _prefix_rates_tssa(tied, x, tied(x).detach())
    assert bool((after <= before + 1e-12 * before.abs().clamp_min(1)).all())


def test_each_prefix_rate_rises_well_above_twice_the_bound():
    """At κ_t = 3/L_t, tokens near 0 (where the Hessian in z_t is β_t UUᵀ) and orthonormal subspaces, every
    head coordinate flips to −2 times itself: every prefix rate rises — the bound is not loose by 2×."""
    x = tokens(0, 2, 6, 6, scale=1e-3)
    U = orthonormal(3, 6, 2)
    Pi = F.one_hot(torch.arange(6) % 3, 3).to(f64).expand(2, 6, 3)
    out = derive_step(CausalCompressedCodingRate(0.5), BoundFraction(3.0))(x, U=U)
    before = causal_compressed_coding_rate(x, U, 0.5, context=x, per_position=True)
    after = causal_compressed_coding_rate(out, U, 0.5, context=x, per_position=True)
    assert bool((after > before).all())
    out = derive_step(CausalVariationalCompressedCodingRate(0.5), BoundFraction(3.0))(x, U=U, Pi=Pi)
    rate = lambda z: causal_variational_compressed_coding_rate(z, U, Pi, 0.5, context=x, per_position=True)  # noqa
    assert bool((rate(out) > rate(x)).all())
    exact = set_orthonormal(CausalExactCompression(6, heads=3, eps=0.5, step_size="auto").double())
    exact.step_size = 1.0  # κ_t = 3/L_t below, per position
    kappa = 3 / causal_lipschitz(exact.subspaces.detach(), 0.5, 6)
    out = -kappa[:, None] * causal_compressed_coding_rate_grad(x, exact.subspaces.detach(), 0.5)
    torch.testing.assert_close(exact.reference(x) * kappa[:, None], out)
    before, after = _prefix_rates_exact(exact, x, exact(x).detach() * kappa[:, None])
    assert bool((after > before).all())
    tied = set_orthonormal(CausalTSSA(6, heads=3, block_size=8, output="tied", eps=0.5)).double()
    with torch.no_grad():
        tied.temp.fill_(1e4)  # Π one-hot from t = 2 (at t = 1 every head's statistic is p): curvature β_t
    tied.step_size = 3 / causal_lipschitz(tied.subspaces.detach(), 0.5, 6)[-1].item()  # κ L_t ≥ 3 for all t
    before, after = _prefix_rates_tssa(tied, x, tied(x).detach())
    assert bool((after > before).all())


# ---- the public layers' formulas ------------------------------------------------------------------
class PublicCausalTSSA(nn.Module):
    """``tost_lang``'s ``CausalSelfAttention_TSSA`` forward as MATH.md §8 states it (a faithful re-statement,
    written from the description): per head, cumulative sums over positions."""

    def __init__(self, n_embd, n_head, block_size, bias):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.temp = nn.Parameter(torch.ones(n_head, 1))
        self.denom_bias = nn.Parameter(torch.zeros(n_head, block_size, 1))

    def forward(self, x):
        B, T, C = x.shape
        w = self.c_attn(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        w_sq = w ** 2
        w_hat = w_sq / torch.cumsum(w_sq, dim=-2).clamp_min(1e-12) + self.denom_bias[:, :T, :]
        Pi = torch.softmax(w_hat.sum(-1) * self.temp, dim=1)  # (B, nh, T): over heads
        m = torch.cumsum(w_sq * Pi.unsqueeze(-1), dim=-2) / (Pi.cumsum(dim=-1) + 1e-8).unsqueeze(-1)
        y = -(w * Pi.unsqueeze(-1)) * (1.0 / (1 + m))
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_causal_tssa_is_tosts_causal_self_attention_on_the_same_weights(bias, dtype):
    public = PublicCausalTSSA(16, 4, 32, bias).to(dtype)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        public.temp.copy_(0.5 + torch.rand(4, 1, generator=g))
        public.denom_bias.copy_(0.2 * torch.randn(4, 32, 1, generator=g))
    ours = CausalTSSA(16, heads=4, block_size=32, bias=bias).to(dtype)
    ours.load_state_dict(public.state_dict(), strict=True)
    keys = {"c_attn.weight", "c_proj.weight", "temp", "denom_bias"}
    keys |= {"c_attn.bias", "c_proj.bias"} if bias else set()
    assert set(ours.state_dict()) == keys
    x = tokens(0, 3, 20, 16).to(dtype)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(ours(x), public(x), **tol)
    public.load_state_dict(ours.state_dict(), strict=True)


def test_causal_mssa_is_crate_gpts_attention():
    """(E15) ``c_proj(concat_k softmax(w_k w_kᵀ/√p + causal mask) w_k)``, ``w = c_attn(x)`` as Q, K and V."""
    layer = CausalMSSA(12, heads=3).double()
    assert set(layer.state_dict()) == {"c_attn.weight", "c_proj.weight", "c_proj.bias"}
    assert CausalMSSA(12, heads=3, bias=False).c_proj.bias is None and layer.c_attn.bias is None
    x = tokens(0, 2, 7, 12)
    w = layer.c_attn(x).view(2, 7, 3, 4).transpose(1, 2)
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    att = torch.softmax((w @ w.transpose(-2, -1) / 2.0).masked_fill(~mask, float("-inf")), dim=-1)
    ref = layer.c_proj((att @ w).transpose(1, 2).reshape(2, 7, 12))
    torch.testing.assert_close(layer(x), ref)
    assert torch.equal(layer.attention(x).triu(1), torch.zeros(2, 3, 7, 7, dtype=f64))


def test_the_exact_layers_last_position_is_the_non_causal_exact_step():
    from srr.layers import ExactCompression

    causal = CausalExactCompression(12, heads=3, eps=0.5, step_size=0.3).double()
    full = ExactCompression(12, heads=3, eps=0.5, step_size=0.3).double()
    full.load_state_dict({"qkv.weight": causal.c_attn.weight}, strict=True)
    x = tokens(0, 2, 9, 12)
    torch.testing.assert_close(causal(x)[:, -1], full(x)[:, -1], rtol=1e-12, atol=1e-14)


def test_causal_tssa_last_position_is_E13_with_its_membership():
    layer = _randomise(CausalTSSA(6, heads=3, block_size=8, output="tied", eps=0.5)).double()
    x = tokens(0, 2, 7, 6)
    Pi = layer.membership(x)
    full = -layer.step_size * variational_compressed_coding_rate_grad(x, layer.subspaces, Pi, 0.5)
    torch.testing.assert_close(layer(x)[:, -1], full[:, -1])


# ---- arguments ------------------------------------------------------------------------------------
def test_bad_arguments_name_what_was_expected():
    with pytest.raises(ValueError, match="block_size"):
        CausalTSSA(8, heads=2, block_size=0)
    with pytest.raises(ValueError, match="T=9 positions, more than block_size=8"):
        CausalTSSA(8, heads=2, block_size=8)(torch.randn(1, 9, 8))
    with pytest.raises(ValueError, match="output='tied' needs bias=False"):
        CausalTSSA(8, heads=2, block_size=8, output="tied", bias=True)
    with pytest.raises(ValueError, match="backend"):
        CausalMSSA(8, heads=2, backend="flash")
    with pytest.raises(ValueError, match=r"step_size"):
        CausalExactCompression(8, heads=2, step_size=-1.0)
    with pytest.raises(ValueError, match=r"x must be a sequence of tokens \(\.\.\., T, dim=8\)"):
        CausalExactCompression(8, heads=2)(torch.randn(2, 5, 7))
