"""``torch.compile`` of the CRATE variants with hand-written and derived layers: one graph, same numbers.

``fullgraph=True`` makes any graph break an error, so each test below is also the "no graph break"
check. ``aot_eager`` traces forward and backward through AOTAutograd (what inductor compiles)
without a C++ build, so these run in the default CI. Derived layers compile with the model: the
``torch.func.grad`` of their objective traces into the same graph, and training differentiates it.
"""
from __future__ import annotations

import pytest
import torch

from srr.bench.bench_compile import derived_modified
from srr.derivation import derive, variants
from srr.layers import relative_error
from srr.linalg import solve_identity_plus
from srr.models import create_model

TINY = dict(image_size=8, patch_size=4, in_chans=1, num_classes=3, dim=16, depth=2, heads=2, head_dim=8)


def _model(kind: str):
    torch.manual_seed(0)
    variant = "crate_derived" if kind == "derived_modified" else kind
    model = create_model("crate_nano", variant=variant, **TINY)
    return derived_modified(model) if kind == "derived_modified" else model


def _forward_backward(fn, model, x):
    out = fn(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *model.parameters()])
    return out, grads


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", ["crate", "crate_exact", "crate_derived", "derived_modified"])
def test_compiles_in_one_graph_and_matches_eager_forward_and_backward(kind):
    model = _model(kind).train()
    # 8 images of 5 tokens: 40 > 2d = 32 tokens, so the derived ISTA step runs as one matrix (Step._fuses)
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # any graph break raises
    out_c, grads_c = _forward_backward(compiled, model, x)
    out_e, grads_e = _forward_backward(model, model, x)
    assert relative_error(out_c, out_e) <= 1e-5
    for g_c, g_e in zip(grads_c, grads_e):
        assert relative_error(g_c, g_e) <= 1e-4


@pytest.mark.parametrize("kind", ["crate", "crate_exact", "crate_derived"])
def test_explain_finds_no_graph_break_in_inference(kind):
    model = _model(kind).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]


@pytest.mark.parametrize("variant", ["crate_exact", "crate_derived"])
def test_auto_step_size_compiles_without_branching_on_the_bound(variant):
    # κ = 1/L (E7) is computed from U at every call: traced, not branched on
    torch.manual_seed(0)
    model = create_model("crate_nano", variant=variant, compression_step_size="auto", **TINY)
    x = torch.randn(2, 1, 8, 8)
    out = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    assert relative_error(out, model(x)) <= 1e-5


def test_reference_backend_of_exact_compression_compiles():
    # the derived reference used to break the graph on its finiteness check (bool of a tensor)
    model = create_model("crate_nano", variant="crate_exact", backend="reference", **TINY)
    x = torch.randn(2, 1, 8, 8)
    out = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    assert relative_error(out, model(x)) <= 1e-5


def test_derived_update_output_is_next_tokens_minus_input():
    torch.manual_seed(0)
    tokens = derive(variants.rate_reduction(0.5), step_size=0.5, dim=16, heads=2)
    update = derive(variants.rate_reduction(0.5), step_size=0.5, dim=16, heads=2, output="update", U=tokens.U)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(update(x), tokens(x) - x)
    with pytest.raises(ValueError, match="output must be one of"):
        derive(variants.ista(), step_size=0.1, dim=16, output="delta")


def test_solve_identity_plus_still_recovers_a_failed_cholesky_eagerly_and_compiled():
    G = torch.tensor([[[1.0, 0.0], [0.0, -4.0]]])  # I + G is indefinite: Cholesky fails, LU solves
    B = torch.eye(2)[None]
    expected = torch.linalg.solve(torch.eye(2) + G, B)
    torch.testing.assert_close(solve_identity_plus(G, 1.0, B), expected)
    compiled = torch.compile(solve_identity_plus, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(G, 1.0, B), expected)


def test_the_benchmarks_floor_of_the_coding_rate_term_is_its_gradient_and_hessian():
    """bench_compile's floor for the modified objective's −R term: ∇R (E5) and its vector-Jacobian
    product (the Hessian of R applied to a cotangent), against autograd in float64."""
    from srr.bench.bench_compile import _floor_rate_gradient
    from srr.rates import coding_rate

    g = torch.Generator().manual_seed(3)
    Z = torch.randn(3, 9, 16, generator=g, dtype=torch.float64).requires_grad_()
    cotangent = torch.randn(3, 9, 16, generator=g, dtype=torch.float64)
    grad, vjp = _floor_rate_gradient(Z, cotangent, eps=0.5)
    grad_ref = torch.autograd.grad(coding_rate(Z, 0.5).sum(), Z, create_graph=True)[0]
    vjp_ref = torch.autograd.grad(grad_ref, Z, cotangent)[0]
    assert relative_error(grad, grad_ref) < 1e-12 and relative_error(vjp, vjp_ref) < 1e-12
