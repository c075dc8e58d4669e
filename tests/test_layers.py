"""srr.layers: every fast layer equals its reference (``check``, float64 and float32), the public
code's formulas, and HU24's finding on the softmax approximation, with the regime where it holds."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from srr.derivation import compression_step_size, derive
from srr.layers import ISTA, MSSA, CheckReport, ExactCompression, OvercompleteISTA, check
from srr.layers.exact import exact_compression_update
from srr.layers.mssa import OUTPUTS
from srr.objective import CompressedCodingRate
from srr.rates import compressed_coding_rate, compressed_coding_rate_grad

f64 = torch.float64


# ---- check: every fast layer against its reference ------------------------------------------------
@settings(max_examples=12)  # each example: two checks of outputs and all gradients
@given(K=st.integers(1, 4), p=st.integers(1, 6), extra=st.integers(0, 3), N=st.integers(1, 24),
       scale=st.floats(0.1, 3.0), eps=st.floats(0.3, 2.0), kappa=st.floats(0.01, 1.0), seed=st.integers(0, 2**16))
def test_exact_mssa_equals_the_derived_step(K, p, extra, N, scale, eps, kappa, seed):
    """Hand-exact MSSA (E6, hand-written backward) = autodiff of R^c: outputs and all gradients."""
    torch.manual_seed(seed)
    layer = ExactCompression(K * p + extra, heads=K, head_dim=p, step_size=kappa, eps=eps)
    assert check(layer, tokens=N, scale=scale, seed=seed).ok(1e-10)
    # float32: ~100 ulp; at N=1, scale 3, κ=1 the weight gradient reaches 1.2e-5 (so did MSSA(mode="exact"))
    assert check(layer, tokens=N, scale=scale, seed=seed, dtype=torch.float32).ok(3e-5)


def test_exact_mssa_with_auto_step_size_uses_the_bound():
    layer = ExactCompression(12, heads=3, step_size="auto")
    assert layer.kappa(9) == pytest.approx(compression_step_size(layer.subspaces, 0.5, 9))
    assert check(layer).ok(1e-10)


@pytest.mark.parametrize("output", OUTPUTS)
def test_softmax_mssa_equals_the_explicit_softmax(output):
    """SDPA with q = k = v = x U equals the public code's explicit N×N softmax (E8), every output."""
    torch.manual_seed(0)
    layer = MSSA(16, heads=4, output=output, temperature=0.3, step_size=0.7)
    report = check(layer, tokens=11)
    assert report.ok(1e-10), str(report)
    assert check(layer, tokens=11, dtype=torch.float32).ok(1e-5)


@settings(max_examples=15)
@given(d=st.integers(1, 24), N=st.integers(1, 16), eta=st.floats(0.01, 0.5), lam=st.floats(0.0, 0.5),
       learnable=st.booleans(), nonnegative=st.booleans(), scale=st.floats(0.1, 5.0), seed=st.integers(0, 2**16))
def test_fast_ista_equals_the_derived_ista(d, N, eta, lam, learnable, nonnegative, scale, seed):
    torch.manual_seed(seed)
    layer = ISTA(d, step_size=eta, lam=lam, learnable=learnable, nonnegative=nonnegative)
    assert check(layer, tokens=N, scale=scale, seed=seed).ok(1e-10)
    assert check(layer, tokens=N, scale=scale, seed=seed, dtype=torch.float32).ok(1e-5)


@pytest.mark.parametrize("steps, residual", [(1, False), (2, False), (3, True)])
def test_overcomplete_ista_equals_derived_steps_from_zero(steps, residual):
    torch.manual_seed(0)
    layer = OvercompleteISTA(12, expansion=3, steps=steps, residual=residual)
    assert check(layer).ok(1e-10)
    assert check(layer, dtype=torch.float32).ok(1e-5)


def test_check_catches_a_wrong_layer():
    class Wrong(ISTA):
        def forward(self, x):
            return super().forward(x) * 1.001

    report = check(Wrong(8))
    assert not report.ok(1e-4) and report.output == pytest.approx(1e-3, rel=1e-2)
    assert isinstance(report, CheckReport) and "max relative error" in str(report) and "d/d weight" in str(report)


def test_check_pairs_a_derived_layer_with_an_explicit_reference():
    """``reference=`` pairs any layer; here the derived compression layer with the closed form."""
    layer = derive(CompressedCodingRate(eps=0.5), step_size=0.1, dim=8, heads=2)
    report = check(layer, lambda m, x: x - 0.1 * compressed_coding_rate_grad(x, m.U, 0.5))
    assert report.ok(1e-12) and set(report.param_grads) == {"U"}


# ---- MSSA: structure and the public code's conventions ----------------------------------------
def test_mssa_has_the_public_keys_and_a_subspace_view_of_qkv():
    layer = MSSA(12, heads=3)
    assert set(layer.state_dict()) == {"qkv.weight", "to_out.0.weight", "to_out.0.bias"}
    assert layer.qkv.weight.shape == (12, 12) and layer.temperature == pytest.approx(4 ** -0.5)
    U = layer.subspaces
    assert U.shape == (3, 12, 4) and torch.equal(U[1], layer.qkv.weight[4:8].T)
    U.sum().backward()
    assert layer.qkv.weight.grad is not None  # a differentiable view


def test_mssa_output_variants_have_the_published_forms():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 12)
    base = MSSA(12, heads=3, output="identity")
    W = base.qkv.weight
    o = base(x)  # concat_k softmax(A_k A_kᵀ τ) A_k
    for output, expected in [("crate_c", o @ W), ("crate_n", -(o @ W)), ("crate_t", o @ W.T)]:
        layer = MSSA(12, heads=3, output=output)
        layer.load_state_dict(base.state_dict())
        assert torch.allclose(layer(x), expected, atol=1e-6)
    fixed = MSSA(12, heads=3, output="fixed")
    assert "fixed_output" in dict(fixed.named_buffers()) and len(list(fixed.parameters())) == 1
    with pytest.raises(ValueError, match="heads·head_dim == dim"):
        MSSA(12, heads=3, head_dim=3, output="crate_t")


def test_mssa_step_adds_the_update_and_the_exact_update_is_minus_kappa_grad():
    x = torch.randn(2, 9, 12, dtype=f64)
    layer = ExactCompression(12, heads=3, step_size=0.2).double()
    assert torch.equal(layer.step(x), x + layer(x))
    assert torch.allclose(layer(x), -0.2 * compressed_coding_rate_grad(x, layer.subspaces, 0.5), rtol=1e-12, atol=1e-14)


def test_exact_mssa_matches_the_derived_layer_on_shared_subspaces():
    """The pairing the CRATE models use: ``MSSA.step(x)`` = ``derive(R^c)(x)`` with ``U = MSSA.subspaces``."""
    mssa = ExactCompression(12, heads=3, step_size=0.2).double()
    layer = derive(CompressedCodingRate(eps=0.5), step_size=0.2, dim=12, heads=3, U=mssa.subspaces.detach()).double()
    x = torch.randn(3, 8, 12, dtype=f64)
    assert torch.allclose(mssa.step(x), layer(x), rtol=1e-12, atol=1e-14)


def test_exact_mssa_under_autocast_keeps_the_solve_in_float32():
    layer = ExactCompression(16, heads=4, step_size=0.2)
    x = torch.randn(2, 9, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    ref = layer.reference(x.double()).detach()
    assert y.dtype == torch.bfloat16 and float((y.double() - ref).norm() / ref.norm()) < 3e-2


def test_exact_mssa_backward_is_first_order_only():
    x = torch.randn(1, 5, 4, dtype=f64, requires_grad=True)
    W = torch.randn(4, 4, dtype=f64, requires_grad=True)
    update = exact_compression_update(x, W, heads=2, eps=0.5, step_size=0.1)
    (g,) = torch.autograd.grad(update.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        g.sum().backward()


def test_mssa_orthonormal_option_and_dropout():
    layer = MSSA(12, heads=3, output="crate_t", orthonormal=True)
    W = layer.qkv.weight
    assert torch.allclose(W @ W.T, torch.eye(12), atol=1e-5)
    drop = MSSA(12, heads=3, dropout=0.5).train()
    x = torch.randn(2, 7, 12)
    assert not torch.equal(drop(x), drop(x))
    drop.eval()
    assert torch.equal(drop(x), drop(x))


@pytest.mark.parametrize("training", [False, True])
def test_mssa_add_update_is_the_residual_plus_the_update_with_its_gradients(training):
    """The block's fused half-step ``Z + C(LN₁ Z)`` (one in-place addmm) equals the unfused sum, gradients too."""
    torch.manual_seed(0)
    layer = MSSA(12, heads=3).train(training)
    z, x = torch.randn(2, 7, 12, requires_grad=True), torch.randn(2, 7, 12, requires_grad=True)
    fused = layer.add_update(z, x)
    plain = z + layer(x)
    assert torch.allclose(fused, plain, atol=1e-6)
    g = torch.randn_like(plain)
    wrt = [z, x, *layer.parameters()]
    for a, b in zip(torch.autograd.grad(fused, wrt, g), torch.autograd.grad(plain, wrt, g)):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(layer.step(x), layer.add_update(x, x))


def _grad_fns(t):
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            todo.extend(f for f, _ in fn.next_functions)
    return {fn.name() for fn in seen}


def test_mssa_add_update_backward_has_no_copy_of_a_view():
    """The in-place addmm runs on a new tensor, not on a view of one: autograd needs no ``CopySlices``
    (a clone and two copies of the tokens' gradient per layer) and passes the gradient straight through."""
    layer = MSSA(12, heads=3).train()
    z, x = torch.randn(2, 7, 12, requires_grad=True), torch.randn(2, 7, 12, requires_grad=True)
    names = _grad_fns(layer.add_update(z, x))
    assert "AddmmBackward0" in names and "CopySlices" not in names


def test_mssa_add_update_keeps_forward_hooks_seeing_the_update():
    layer = MSSA(12, heads=3).eval()
    z, x = torch.randn(2, 7, 12), torch.randn(2, 7, 12)
    seen = []
    handle = layer.to_out.register_forward_hook(lambda m, args, out: seen.append(out))
    out = layer.add_update(z, x)
    handle.remove()
    assert len(seen) == 1 and torch.allclose(out, z + seen[0], atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(output="crate_x"), "output"), (dict(step_size=0), "step_size"), (dict(backend="triton"), "backend"),
    (dict(step_size="auto"), "ExactCompression"), (dict(heads=0), "heads"), (dict(dropout=1.0), "dropout"),
    (dict(temperature=float("nan")), "temperature"), (dict(eps=0.5), "eps"),
])
def test_mssa_rejects_bad_arguments(kwargs, match):
    kwargs = {"heads": 2, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        MSSA(8, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=-1.0), "eps"), (dict(eps=float("inf")), "eps"), (dict(eps=float("nan")), "eps"),
    (dict(eps=True), "eps"), (dict(step_size=0), "step_size"), (dict(step_size=float("inf")), "step_size"),
    (dict(heads=0), "heads"), (dict(backend="softmax"), "backend"), (dict(output="crate"), "output"),
])
def test_exact_compression_rejects_bad_arguments(kwargs, match):
    """Every argument is checked by the shared checkers; ``eps=inf`` (accepted before) is rejected."""
    kwargs = {"heads": 2, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        ExactCompression(8, **kwargs)


@pytest.mark.parametrize("make", [
    lambda backend: MSSA(12, heads=3, output="crate_c", backend=backend),
    lambda backend: ExactCompression(12, heads=3, step_size=0.2, backend=backend),
    lambda backend: ISTA(12, backend=backend),
    lambda backend: OvercompleteISTA(12, expansion=2, backend=backend),
], ids=["mssa", "exact", "ista", "overcomplete_ista"])
def test_backend_switch_selects_the_reference_path_which_agrees_with_the_fused_one(make):
    torch.manual_seed(0)
    fused = make("fused").double()
    reference = make("reference").double()
    reference.load_state_dict(fused.state_dict())
    x = torch.rand(2, 7, 12, dtype=f64)
    assert torch.allclose(fused(x), reference(x), rtol=1e-10, atol=1e-12)
    assert torch.equal(reference(x), reference.reference(x))


# ---- ISTA: the public code's step with fewer matmuls --------------------------------------------
def test_ista_equals_the_public_three_matmul_code():
    torch.manual_seed(0)
    layer = ISTA(16).double()
    D, x = layer.weight, torch.randn(3, 5, 16, dtype=f64)
    x1 = F.linear(x, D)  # model/crate.py, FeedForward.forward, as written
    public = F.relu(x + 0.1 * (F.linear(x, D.t()) - F.linear(x1, D.t())) - 0.1 * 0.1)
    assert torch.allclose(layer(x), public, rtol=1e-12, atol=1e-14)
    assert set(layer.state_dict()) == {"weight"} and layer.dictionary is layer.weight
    assert layer.weight.abs().max() <= (6 / 16) ** 0.5  # kaiming_uniform_ with a=0, as the public code


def test_ista_without_nonnegativity_soft_thresholds_and_learnable_parameters_train():
    layer = ISTA(8, nonnegative=False, learnable=True)
    x = torch.randn(4, 6, 8)
    y = layer(x)
    assert (y < 0).any() and (y == 0).any()
    y.square().sum().backward()
    assert layer.step_size.grad is not None and layer.lam.grad is not None


def test_ista_inference_forms_its_matrix_once_and_follows_weight_updates():
    """(E10') ``I + M`` is cached while no gradient is needed; an optimizer step or a loaded state dict
    invalidates it, and the fused CPU path (oneDNN ReLU(xW + b)) equals the autograd path."""
    torch.manual_seed(0)
    layer = ISTA(16)
    x = torch.randn(3, 5, 16)
    with torch.inference_mode():
        first = layer(x)
        assert layer.linear_form()[0] is layer.linear_form()[0]  # cached, not recomputed
    assert torch.allclose(first, layer(x), atol=1e-6)  # grad mode: formed per call, same values
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(x).sum().backward()
    opt.step()
    with torch.no_grad():
        after_step = layer(x)
    assert not torch.allclose(after_step, first)
    assert torch.allclose(after_step, layer(x), atol=1e-6)
    layer.load_state_dict({"weight": torch.zeros(16, 16)})
    with torch.inference_mode():
        assert torch.allclose(layer(x), torch.relu(x - 0.01), atol=1e-7)  # D = 0: ReLU(x − ηλ)
    del layer.weight  # a replaced parameter (its memory may be reused) is a new matrix too
    layer.weight = torch.nn.Parameter(torch.eye(16))  # D = I: M = 0
    with torch.inference_mode():
        assert torch.allclose(layer(x), torch.relu(x - 0.01), atol=1e-7)
        layer.step_size = 0.5  # a float hyperparameter changed: M = 0 still, threshold 0.05
        assert torch.allclose(layer(x), torch.relu(x - 0.05), atol=1e-7)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_ista_inference_cache_cannot_go_stale_behind_version_counters(mode):
    """A write through ``weight.data`` (EMA, pruning) bypasses ``_version``: the next output must use it."""
    torch.manual_seed(0)
    layer, other = ISTA(16), ISTA(16)
    x = torch.randn(2, 5, 16)
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with context():
        before = layer(x)
        layer.weight.data.copy_(other.weight.data)
        after = layer(x)
        expected = other(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)
    with torch.no_grad():
        layer.weight.data.mul_(0.0)  # in place, same storage, same _version
        torch.testing.assert_close(layer(x), torch.relu(x - 0.01), rtol=0, atol=1e-7)


def test_ista_rejects_bad_arguments():
    with pytest.raises(ValueError, match="step_size"):
        ISTA(8, step_size=0.0)
    with pytest.raises(ValueError, match="lam"):
        ISTA(8, lam=-0.1)
    with pytest.raises(ValueError, match="backend"):
        ISTA(8, backend="cuda")


def test_ista_triton_backend_on_the_cpu_needs_the_interpreter():
    layer = ISTA(8, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        layer(torch.randn(2, 3, 8))
    assert torch.equal(ISTA(8, backend="auto").eval()(torch.zeros(1, 1, 8)), torch.zeros(1, 1, 8))


def test_overcomplete_ista_equals_the_public_crate_alpha_code():
    torch.manual_seed(0)
    layer = OvercompleteISTA(8, expansion=4, steps=2).double()
    D, D1, x = layer.D, layer.D1, torch.randn(2, 5, 8, dtype=f64)
    # CRATE-α OvercompleteISTABlock.forward, as written
    z1 = F.relu(0.1 * torch.einsum("pd,nlp->nld", D, x) - 0.1 * 0.1)
    lasso_grad = torch.einsum("pd,nlp->nld", D, torch.einsum("dp,nlp->nld", D, z1) - x)
    z2 = F.relu(z1 - 0.1 * lasso_grad - 0.1 * 0.1)
    public = torch.einsum("dp,nlp->nld", D1, z2)
    assert torch.allclose(layer(x), public, rtol=1e-12, atol=1e-14)
    assert layer.dictionary.shape == (8, 32) and set(layer.state_dict()) == {"D", "D1"}
    with_residual = OvercompleteISTA(8, residual=True).double()
    with_residual.load_state_dict(layer.state_dict())
    assert torch.allclose(with_residual(x), x + layer(x), rtol=1e-12, atol=1e-14)


# ---- HU24: the softmax approximation decompresses --------------------------------------------
def _toy_rate_changes(output, c, *, N, d, K, layers=12, scale=1.0, eps=0.5, seed=0):
    """HU24's toy: Gaussian Z⁰, each layer Z ← Z + MSSA(Z) with fresh orthonormal U (K·p = d),
    τ = p^{-1/2}, no normalisation; returns ΔR^c of every layer, measured with that layer's U."""
    g = torch.Generator().manual_seed(seed)
    Z = scale * torch.randn(1, N, d, generator=g, dtype=f64)
    changes = []
    for _ in range(layers):
        layer = MSSA(d, heads=K, output=output, step_size=c).double()
        Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))[0]
        with torch.no_grad():
            layer.qkv.weight.copy_(Q.T)
            U = layer.subspaces
            before = compressed_coding_rate(Z, U, eps)
            Z = Z + layer(Z)
            changes.append(float(compressed_coding_rate(Z, U, eps) - before))
    return changes


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
def test_crate_c_raises_and_crate_n_lowers_compressed_rate_at_every_layer(scale):
    """HU24 §3 (scaled-down toy: N=49, d=96, K=6, p=16, 12 layers). Regime: Gaussian tokens of any
    scale in [0.1, 10], update scale c = 1/2. CRATE-C (``+ o W``) raises R^c at every layer;
    CRATE-N (``− o W``) lowers it at every layer."""
    toy = dict(N=49, d=96, K=6, scale=scale)
    assert all(r > 0 for r in _toy_rate_changes("crate_c", 0.5, **toy))
    assert all(r < 0 for r in _toy_rate_changes("crate_n", 0.5, **toy))


@pytest.mark.parametrize("scale, c, direction", [
    (0.1, 2.0, "down"), (1.0, 2.0, "down"), (10.0, 2.0, "up"), (0.1, 4.0, "up"), (1.0, 4.0, "up"), (10.0, 4.0, "up"),
])
def test_crate_n_raises_compressed_rate_when_its_update_scale_is_large(scale, c, direction):
    """Where the sign fix is not enough (reported, not hidden). With attention of peakedness s ∈ (0, 1]
    (``o ≈ s·A`` per head), a CRATE-N layer is ``≈ Z(I − c·s UUᵀ)``: it overshoots once c·s > 2. At
    c = 4 it raises R^c at every layer at every scale; at c = 2 it still lowers R^c for tokens of
    scale ≤ 1 but raises it for scale 10, where attention is nearly one-hot (s ≈ 1). The softmax
    step has its own step-size boundary, as the exact step has 1/L (E7); CRATE-C rises regardless."""
    toy = dict(N=49, d=96, K=6, scale=scale)
    changes = _toy_rate_changes("crate_n", c, **toy)
    assert all(r > 0 for r in changes) if direction == "up" else all(r < 0 for r in changes)
    assert all(r > 0 for r in _toy_rate_changes("crate_c", c, **toy))


@pytest.mark.slow
@pytest.mark.parametrize("c", [0.1, 0.5, 1.5])
def test_hu24_toy_setting_in_full(c):
    """HU24's own toy: N=196, d=384, K=6 (p=64), 12 layers, orthonormal U, Gaussian Z⁰."""
    toy = dict(N=196, d=384, K=6)
    assert all(r > 0 for r in _toy_rate_changes("crate_c", c, **toy))
    assert all(r < 0 for r in _toy_rate_changes("crate_n", c, **toy))


@pytest.mark.slow
def test_benchmark_runs_and_the_fast_paths_agree_with_the_baselines():
    from srr.bench.bench_layers import main

    (result,) = main(["--quick", "--shapes", "tiny"])
    assert result["exact_rel_err"] < 1e-5 and result["block_rel_err"] < 1e-5
