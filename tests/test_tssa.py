"""TSSA (ToST, Wu et al. 2025): the variational compression term R^c_var (E12), its derived step (E13),
Hadamard's bound against R^c (E2), the fast layer against the derived step and ToST's formulas, and the
``tost`` model variant."""
from __future__ import annotations

import json

import pytest
import torch
from einops import rearrange
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from srr.derivation import BoundFraction, compression_lipschitz, derive_step, lipschitz_bound
from srr.layers import ISTA, TSSA, check
from srr.layers.tssa import OUTPUTS
from srr.measurement import SRRRegularizer, measure
from srr.models import create_model
from srr.objective import L1, VariationalCompressedCodingRate, parse
from srr.rates import (compressed_coding_rate, variational_compressed_coding_rate,
                       variational_compressed_coding_rate_grad)

f64 = torch.float64


def rel(a, b) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def tokens(seed, *shape, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=f64)


def membership(seed, *shape, kind="soft"):
    """Π ``(..., N, K)``: softmax rows (``soft``), one-hot rows that may leave a head empty (``hard``), or all ones."""
    logits = tokens(seed, *shape, scale=2.0)
    if kind == "soft":
        return torch.softmax(logits, -1)
    if kind == "hard":
        return torch.nn.functional.one_hot(logits.argmax(-1), shape[-1]).to(f64)
    return torch.ones(shape, dtype=f64)


def e13(Z, U, Pi, eps):
    """(E13) written out entry by entry: ∇_{z_i} = (p/(Nε²)) Σ_k Σ_j π_ik a_kij u_kj / (1 + (p/ε²) s_kj / n_k)."""
    K, d, p = U.shape
    N = Z.shape[-2]
    A = torch.einsum("...nd,kdp->...knp", Z, U)
    n = Pi.sum(-2)  # (..., K)
    s = torch.einsum("...nk,...knp->...kp", Pi, A**2)
    m = torch.where(n[..., None] > 0, s / n[..., None].clamp_min(1e-300), torch.zeros_like(s))
    weights = torch.einsum("...nk,...knp->...knp", Pi, A) / (1 + p / eps**2 * m[..., None, :])
    return p / (N * eps**2) * torch.einsum("...knp,kdp->...nd", weights, U)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 4), st.integers(1, 4), st.integers(0, 3))
kinds = st.sampled_from(["soft", "hard", "ones"])


# ---- the term (E12) ------------------------------------------------------------------------------
def test_the_term_prints_parses_and_evaluates_the_function():
    term = VariationalCompressedCodingRate(eps=0.3)
    assert str(term) == "R^c_var(Z; U, Π, ε=0.3)"
    assert term.latex().startswith(r"R^c_{\mathrm{var}}(\mathbf{Z}")
    obj = 2 * term + 0.1 * L1()
    assert parse(obj.spec()) == obj and parse("RcVar(eps=(0.3, 0.5))").terms[0][1].eps == (0.3, 0.5)
    assert term.requires == ("U", "Pi")
    Z, U, Pi = tokens(0, 2, 5, 6), tokens(1, 3, 6, 2), membership(2, 2, 5, 3)
    assert torch.equal(term(Z, U=U, Pi=Pi), variational_compressed_coding_rate(Z, U, Pi, 0.3))
    with pytest.raises(TypeError, match="Pi"):
        term(Z, U=U)


def test_the_term_is_E12_summed_over_heads_and_an_empty_head_counts_zero():
    Z, U = tokens(0, 7, 5), tokens(1, 3, 5, 2)
    Pi = membership(2, 7, 3, kind="hard")
    Pi[:, 2] = 0  # head 2 is empty
    Pi[:, 0] = 1 - Pi[:, 1]
    per_head = variational_compressed_coding_rate(Z, U, Pi, 0.5, per_subspace=True)
    for k in range(3):
        A, pi = Z @ U[k], Pi[:, k]
        n = pi.sum()
        expected = 0.0 if n == 0 else n / 14 * torch.log1p(2 / 0.25 * (pi @ A**2) / n).sum()
        assert float(per_head[k]) == pytest.approx(float(expected), rel=1e-12, abs=1e-300)
    assert float(per_head[2]) == 0.0


def test_per_subspace_eps_is_the_sum_of_single_head_terms():
    Z, U, Pi = tokens(0, 2, 6, 5), tokens(1, 2, 5, 2), membership(2, 2, 6, 2)
    total = variational_compressed_coding_rate(Z, U, Pi, (0.3, 0.7))
    parts = sum(variational_compressed_coding_rate(Z, U[k:k + 1], Pi[..., k:k + 1], e)
                for k, e in enumerate((0.3, 0.7)))
    assert torch.allclose(total, parts, rtol=1e-13)


@pytest.mark.parametrize("Pi, match", [(torch.ones(5, 2), r"\(\.\.\., N=5, K=3\)"),
                                       (-torch.ones(5, 3), r"in \[0, 1\]"),
                                       (torch.ones(5, 3, dtype=torch.long), "floating")])
def test_bad_memberships_are_named(Pi, match):
    with pytest.raises((ValueError, TypeError), match=match):
        variational_compressed_coding_rate(torch.randn(5, 4), torch.randn(3, 4, 2), Pi, 0.5)


# ---- Hadamard: R^c ≤ R^c_var(Π ≡ 1), equal on diagonal head Grams --------------------------------
@given(shape=shapes, scale=st.floats(0.01, 10.0), eps=st.floats(0.1, 2.0), seed=st.integers(0, 2**16))
def test_hadamard_the_variational_term_bounds_the_compressed_rate(shape, scale, eps, seed):
    B, N, K, p, extra = shape
    d = K * p + extra
    Z, U = tokens(seed, B, N, d, scale=scale), tokens(seed + 1, K, d, p)
    ones = torch.ones(N, K, dtype=f64)
    Rc, Rc_var = compressed_coding_rate(Z, U, eps), variational_compressed_coding_rate(Z, U, ones, eps)
    assert (Rc <= Rc_var * (1 + 1e-12) + 1e-12).all()


@given(K=st.integers(1, 4), p=st.integers(1, 4), extra_tokens=st.integers(0, 6), eps=st.floats(0.1, 2.0),
       seed=st.integers(0, 2**16))
def test_hadamard_is_an_equality_when_every_head_gram_is_diagonal(K, p, extra_tokens, eps, seed):
    """Z = P diag(σ) Qᵀ with orthonormal P, Q and U_k = blocks of Q: every A_kᵀA_k = diag(σ_k²)."""
    d, N = K * p, K * p + extra_tokens
    Q = torch.linalg.qr(tokens(seed, d, d))[0]
    P = torch.linalg.qr(tokens(seed + 1, N, d))[0]  # (N, d), orthonormal columns
    sigma = tokens(seed + 2, d).abs() * 3
    Z, U = P * sigma @ Q.mT, Q.unflatten(1, (K, p)).transpose(0, 1)  # (N, d), (K, d, p)
    A = torch.einsum("nd,kdp->knp", Z, U)
    gram = A.mT @ A
    assert torch.allclose(gram, torch.diag_embed(torch.diagonal(gram, dim1=-2, dim2=-1)), atol=1e-10)
    ones = torch.ones(N, K, dtype=f64)
    Rc, Rc_var = compressed_coding_rate(Z, U, eps), variational_compressed_coding_rate(Z, U, ones, eps)
    assert float(Rc_var) == pytest.approx(float(Rc), rel=1e-10)


def test_hadamard_is_strict_for_a_correlated_head():
    Z = tokens(0, 12, 2) @ torch.tensor([[1.0, 1.0], [0.0, 0.2]], dtype=f64)  # correlated coordinates
    U, ones = torch.eye(2, dtype=f64)[None], torch.ones(12, 1, dtype=f64)
    assert float(compressed_coding_rate(Z, U, 0.5)) < float(variational_compressed_coding_rate(Z, U, ones, 0.5)) - 0.1


# ---- the derived step (E13) ----------------------------------------------------------------------
@given(shape=shapes, kind=kinds, scale=st.floats(0.05, 5.0), eps=st.floats(0.2, 2.0), kappa=st.floats(0.01, 2.0),
       seed=st.integers(0, 2**16))
def test_derived_gradient_is_the_closed_form_E13(shape, kind, scale, eps, kappa, seed):
    """Autodiff of R^c_var with Π held fixed = E13 entry by entry = the library's closed form (float64)."""
    B, N, K, p, extra = shape
    d = K * p + extra
    Z, U, Pi = tokens(seed, B, N, d, scale=scale), tokens(seed + 1, K, d, p), membership(seed + 2, B, N, K, kind=kind)
    step = derive_step(VariationalCompressedCodingRate(eps=eps), step_size=kappa)
    grad = step.gradient(Z, U=U, Pi=Pi)
    assert rel(grad, e13(Z, U, Pi, eps)) < 1e-12
    assert rel(grad, variational_compressed_coding_rate_grad(Z, U, Pi, eps)) < 1e-12
    assert rel(step(Z, U=U, Pi=Pi), Z - kappa * e13(Z, U, Pi, eps)) < 1e-12


def test_derived_step_holds_pi_fixed_and_makes_no_token_by_token_matrix():
    """Π enters as a constant (changing Z does not move it) and the graph has no (N, N) tensor."""
    Z, U, Pi = tokens(0, 40, 6), tokens(1, 3, 6, 2), membership(2, 40, 3)
    step = derive_step(VariationalCompressedCodingRate(eps=0.5), step_size=0.1)
    shapes_seen = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            shapes_seen.extend(tuple(o.shape) for o in (out if isinstance(out, (tuple, list)) else [out])
                               if isinstance(o, torch.Tensor))
            return out

    with Spy():
        step(Z, U=U, Pi=Pi)
    assert shapes_seen and all(s.count(40) <= 1 for s in shapes_seen)


@given(shape=shapes, kind=kinds, scale=st.floats(0.01, 10.0), eps=st.floats(0.2, 2.0), fraction=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**16))
def test_step_below_the_bound_never_increases_the_variational_rate(shape, kind, scale, eps, fraction, seed):
    """κ ≤ 1/L (L of E7, which bounds R^c_var's Hessian for any fixed Π in [0, 1]) ⇒ R^c_var does not increase."""
    B, N, K, p, extra = shape
    d = K * p + extra
    Z, U, Pi = tokens(seed, B, N, d, scale=scale), tokens(seed + 1, K, d, p), membership(seed + 2, B, N, K, kind=kind)
    term = VariationalCompressedCodingRate(eps=eps)
    step = derive_step(term, step_size=BoundFraction(fraction))
    before, after = term(Z, U=U, Pi=Pi), term(step(Z, U=U, Pi=Pi), U=U, Pi=Pi)
    assert (after <= before + 1e-12 * before.abs() + 1e-300).all()


def test_the_bound_is_E7s_and_is_attained_near_zero_with_every_token_in_every_head():
    """At Π ≡ 1 and Z → 0, R^c_var ≈ ½ Σ_k β_k ‖Z U_k‖², the same quadratic as R^c: the bound is tight."""
    U = tokens(0, 2, 5, 2)
    Z, Pi = tokens(1, 9, 5), torch.ones(9, 2, dtype=f64)
    term = VariationalCompressedCodingRate(eps=0.5)
    L = lipschitz_bound(term, Z, U=U, Pi=Pi)
    assert L == compression_lipschitz(U, 0.5, 9)
    M = sum((2 / (9 * 0.25)) * U[k] @ U[k].T for k in range(2))
    top = torch.linalg.eigh(M)[1][:, -1]
    Z0 = 1e-5 * tokens(2, 9, 1) @ top[None]
    hvp = torch.autograd.functional.hvp(lambda z: term(z, U=U, Pi=Pi), Z0, Z0)[1]
    assert float((hvp * Z0).sum() / (Z0 * Z0).sum()) == pytest.approx(L, rel=1e-6)


def test_bad_step_parameters_are_named():
    step = derive_step(VariationalCompressedCodingRate(eps=0.5), step_size=0.1)
    with pytest.raises(TypeError, match="missing \\['Pi'\\]"):
        step(torch.randn(4, 3), U=torch.randn(1, 3, 2))


# ---- the fast layer --------------------------------------------------------------------------------
@settings(max_examples=12)  # each example: two checks of outputs and all gradients
@given(K=st.integers(1, 4), p=st.integers(1, 6), extra=st.integers(0, 3), N=st.integers(1, 24),
       output=st.sampled_from(OUTPUTS), scale=st.floats(0.1, 3.0), eps=st.floats(0.3, 4.0),
       kappa=st.floats(0.01, 1.0), seed=st.integers(0, 2**16))
def test_fast_tssa_equals_the_derived_step(K, p, extra, N, output, scale, eps, kappa, seed):
    """Fast TSSA = autodiff of R^c_var with Π held fixed (E13): outputs and all gradients, both outputs."""
    torch.manual_seed(seed)
    layer = TSSA(K * p + extra, heads=K, head_dim=p, output=output, eps=eps, step_size=kappa)
    with torch.no_grad():
        layer.temp.uniform_(0.2, 3.0)
    report = check(layer, tokens=N, scale=scale, seed=seed)
    assert report.ok(1e-10), str(report)
    assert check(layer, tokens=N, scale=scale, seed=seed, dtype=torch.float32).ok(1e-5)


def test_tied_tssa_is_minus_kappa_times_the_closed_form_gradient():
    layer = TSSA(12, heads=3, output="tied", eps=0.8, step_size=0.4).double()
    x = tokens(0, 2, 10, 12)
    with torch.no_grad():
        expected = -0.4 * variational_compressed_coding_rate_grad(x, layer.subspaces, layer.membership(x), 0.8)
        assert rel(layer(x), expected) < 1e-12
        assert rel(layer.step(x), x + expected) < 1e-12


class ToSTAttention(nn.Module):
    """ToST's ``AttentionTSSA`` (RobinWu218/ToST, ``tost_vision/tost.py``) as MATH.md §7 states it."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.heads = num_heads
        self.qkv = nn.Linear(dim, dim, bias=False)
        self.temp = nn.Parameter(torch.ones(num_heads, 1))
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x):
        w = rearrange(self.qkv(x), "b n (h d) -> b h n d", h=self.heads)
        w_sq = torch.nn.functional.normalize(w, dim=-2) ** 2
        Pi = torch.softmax(torch.sum(w_sq, dim=-1) * self.temp, dim=1)  # b h n: over heads
        dots = torch.matmul((Pi / (Pi.sum(dim=-1, keepdim=True) + 1e-8)).unsqueeze(-2), w**2)  # b h 1 d
        out = -torch.mul(w.mul(Pi.unsqueeze(-1)), 1.0 / (1 + dots))
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


def test_untied_tssa_loads_a_tost_state_dict_and_computes_tosts_formulas():
    torch.manual_seed(0)
    tost = ToSTAttention(24, 4).double()
    with torch.no_grad():
        tost.temp.uniform_(0.5, 2.0)
    layer = TSSA(24, heads=4).double()
    assert sorted(layer.state_dict()) == ["qkv.weight", "temp", "to_out.0.bias", "to_out.0.weight"]
    layer.load_state_dict(tost.state_dict(), strict=True)
    x = tokens(1, 3, 50, 24, scale=2.0).requires_grad_()
    ours, theirs = layer(x), tost(x)
    assert rel(ours, theirs) < 1e-7  # ToST adds 1e-8 to n_k; ours divides exactly
    g = tokens(2, 3, 50, 24)
    grads = torch.autograd.grad((ours * g).sum(), [x, *layer.parameters()])
    grads_tost = torch.autograd.grad((theirs * g).sum(), [x, *tost.parameters()])
    assert all(rel(a, b) < 1e-7 for a, b in zip(grads, grads_tost))


def test_membership_rows_lie_on_the_simplex_and_sharpen_with_the_temperature():
    layer = TSSA(12, heads=3).double()
    x = tokens(0, 2, 30, 12)
    Pi = layer.membership(x)
    assert Pi.shape == (2, 30, 3) and (Pi > 0).all() and torch.allclose(Pi.sum(-1), torch.ones(2, 30, dtype=f64))
    with torch.no_grad():
        layer.temp.fill_(50.0)
    assert layer.membership(x).max(-1).values.mean() > Pi.max(-1).values.mean()


def test_fast_tssa_makes_no_token_by_token_matrix():
    """O(N) memory: no intermediate of the forward or backward pass has two token dimensions."""
    N = 97
    layer = TSSA(12, heads=3)
    x = torch.randn(2, N, 12, requires_grad=True)
    seen = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            seen.extend(tuple(o.shape) for o in (out if isinstance(out, (tuple, list)) else [out])
                        if isinstance(o, torch.Tensor))
            return out

    with Spy():
        layer(x).sum().backward()
    assert seen and max(s.count(N) for s in seen) == 1


@pytest.mark.parametrize("kwargs, match", [(dict(output="softmax"), "output"), (dict(eps=-1.0), "eps"),
                                           (dict(eps=(0.5, 0.5, 0.5)), "eps"), (dict(step_size=0.0), "step_size"),
                                           (dict(dropout=1.0), "dropout"), (dict(heads=0), "heads"),
                                           (dict(backend="triton"), "backend")])
def test_tssa_rejects_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TSSA(12, **{"heads": 3, **kwargs})


def test_backend_switch_selects_the_derived_reference():
    torch.manual_seed(0)
    fast = TSSA(12, heads=3).double()
    ref = TSSA(12, heads=3, backend="reference").double()
    ref.load_state_dict(fast.state_dict())
    x = tokens(0, 2, 9, 12)
    assert rel(ref(x), fast(x)) < 1e-12


# ---- the tost variant --------------------------------------------------------------------------------
def tost_model(**kw):
    torch.manual_seed(0)
    return create_model("crate_nano", variant="tost", **{"depth": 2, **kw})


def test_tost_is_the_crate_block_with_tssa_in_place_of_mssa():
    model = tost_model()
    for block in model.blocks():
        assert isinstance(block.compression, TSSA) and isinstance(block.sparsification, ISTA)
        assert block.compression.output == "tost" and block.subspaces.shape == (4, 64, 16)
    keys = set(model.state_dict())
    assert {"transformer.layers.1.0.fn.qkv.weight", "transformer.layers.1.0.fn.temp",
            "transformer.layers.1.0.fn.to_out.0.weight", "transformer.layers.1.0.fn.to_out.0.bias",
            "transformer.layers.1.1.fn.weight"} <= keys
    assert "transformer.layers.1.0.fn.temp" in model.no_weight_decay()  # ToST: no decay on temp


def test_tost_half_step_is_its_tssa_update_on_the_normed_tokens():
    model = tost_model().double().eval()
    x = torch.randn(3, 1, 8, 8, dtype=f64)
    _, layers = model.forward_layer_tokens(x)
    block, t = model.blocks()[0], layers[0]
    assert rel(t.half, t.input + block.compression(block[0].norm(t.input))) < 1e-14
    assert (t.output >= 0).all()


def test_tost_trains_under_the_regularizer_and_is_measured():
    model = tost_model()
    x = torch.randn(8, 1, 8, 8)
    with SRRRegularizer(model, layers=[-1], weight=0.1, eps=0.5) as reg:
        loss = torch.nn.functional.cross_entropy(model(x), torch.arange(8) % 10) + reg()
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "temp" in n or "qkv" in n)
    table = measure(model, x, eps=0.5, progress=False)
    assert len(table.select("out")) == 2 and all(torch.isfinite(torch.tensor(table.column("Rc"))))


def test_tost_compiles_into_one_graph():
    model = tost_model().eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(torch.compile(model, backend="eager", fullgraph=True)(x), model(x))


@pytest.mark.slow
def test_tost_compiled_with_inductor_matches_eager_forward_and_backward():
    model = tost_model().train()
    x = torch.randn(4, 1, 8, 8)
    compiled = torch.compile(model)
    out, ref = compiled(x), model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    g = torch.autograd.grad(out.square().sum(), model.blocks()[0].compression.temp)[0]
    g_ref = torch.autograd.grad(ref.square().sum(), model.blocks()[0].compression.temp)[0]
    torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-6)


def test_srr_train_cli_trains_a_tost_model(tmp_path):
    from typer.testing import CliRunner

    from srr.cli import app

    args = ["train", "--variant", "tost", "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "32",
            "--train-subset", "64", "--measure-samples", "8", "--threads", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["variant"] == "tost"


def test_the_guides_tssa_section_derives_the_layer_in_under_ten_lines():
    """docs/guide-derive.md shows TSSA derived from its objective, and the code runs as printed."""
    import pathlib
    import re

    guide = (pathlib.Path(__file__).parents[1] / "docs" / "guide-derive.md").read_text()
    section = guide.split("## Beyond CRATE: TSSA from its objective", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip() and not line.startswith("#")]) < 10
    namespace: dict = {}
    exec(compile(code, "guide-derive.md", "exec"), namespace)  # noqa: S102 (its own assert checks the step)
    assert "VariationalCompressedCodingRate" in code and "TSSA" in code


@pytest.mark.slow  # one fresh process per (layer, N, pass): ~30 s
def test_scaling_benchmark_quick_mode_writes_its_results(tmp_path):
    from experiments.bench.bench_tssa import LAYERS, PASSES, main

    payload = main(["--quick", "--tokens", "64", "128", "--out", str(tmp_path)])
    for name in ("runs.csv", "table.md", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["quick"] is True and saved["command"].startswith("python -m experiments.bench.bench_tssa")
    assert len(payload["rows"]) == 2 * len(LAYERS) * len(PASSES)
    assert all(r["seconds"] > 0 and r["peak_mib"] >= 0 for r in payload["rows"])
    assert set(saved["tssa_overtakes_sdpa_at"]) == set(PASSES)


def test_measure_reports_each_tssa_layers_own_variational_rate():
    """srr.measure gives R^c_var (E12) with the layer's own membership Π for tost layers, None elsewhere."""
    import srr
    from srr.models import create_model

    torch.manual_seed(0)
    images = torch.randn(6, 1, 8, 8)
    model = create_model("crate_nano", variant="tost", patch_size=2).eval()
    m = srr.measure(model, images, eps=0.5, progress=False)
    with torch.no_grad():
        _, layers = model.forward_layer_tokens(images)
        block, tokens = model.blocks()[1], layers[1]
        Pi = block.compression.membership(tokens.mssa_input)
        expected = {site: srr.variational_compressed_coding_rate(Z, block.subspaces, Pi, 0.5).mean().item()
                    for site, Z in (("in", tokens.input), ("half", tokens.half), ("out", tokens.output))}
    got = {r.site: r.Rc_var for r in m if r.layer == 1}
    assert got == pytest.approx(expected, rel=1e-5)
    plain = srr.measure(create_model("crate_nano", patch_size=2).eval(), images, progress=False)
    assert all(r.Rc_var is None for r in plain) and "Rc_var" in plain.to_csv().splitlines()[0]
