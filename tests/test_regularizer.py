"""SRRRegularizer: value, gradient routing, hooks, numerics, and its effect in training (HU24 §6)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from srr.data import load_dataset
from srr.measurement import Fixed, FromData, Learned, SRRRegularizer, measure
from srr.models import create_model
from srr.rates import coding_rate, compressed_coding_rate, sparse_rate_reduction


def _crate(dtype=torch.float64):
    torch.manual_seed(0)
    return create_model("crate_nano").to(dtype)


def _images(n=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


def _tiny_vit():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=10).double()


def _touched(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


# ----- value ----------------------------------------------------------------------------------

@pytest.mark.parametrize("detach", [True, False])
def test_crate_value_equals_plain_computation_from_intermediates_and_subspaces(detach):
    model = _crate()
    x, _ = _images()
    with SRRRegularizer(model, layers=[1, 3], weight=0.3, eps=0.5, lam=0.1, detach_input=detach) as reg:
        model(x)
        value = reg()
    _, layers = model.forward_layer_tokens(x)
    U = model.layer_subspaces()
    parts = [sparse_rate_reduction(layers[ell].output, U[ell], 0.5, 0.1).mean() for ell in (1, 3)]
    torch.testing.assert_close(value, 0.3 * (parts[0] + parts[1]) / 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(reg.parts["transformer.layers.3"].srr, parts[1].detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(reg.parts["transformer.layers.3"].R, coding_rate(layers[3].output, 0.5).mean().detach())


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_batch_scope_is_the_rate_of_the_pooled_features(pool):
    model = _crate()
    x, _ = _images(12)
    with SRRRegularizer(model, layers=[-1], weight=1.0, eps=0.5, scope="batch", pool=pool) as reg:
        features = model.forward_features(x)  # (B, N, d)
        value = reg()
    F_ = features[:, 0] if pool == "cls" else features.mean(1)  # (B, d): one token per sample
    U = model.layer_subspaces()[-1]
    expected = 0.1 * (F_ != 0).sum().double() + compressed_coding_rate(F_, U, 0.5) - coding_rate(F_, 0.5)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=0)


def test_auto_pool_follows_the_model():
    assert SRRRegularizer(_crate(), scope="batch").pool == "cls"
    assert SRRRegularizer(create_model("crate_nano", pool="mean"), scope="batch").pool == "mean"
    assert SRRRegularizer(_tiny_vit(), scope="batch").pool == "cls"
    assert SRRRegularizer(torchvision.models.resnet18(), subspaces=FromData(heads=4), scope="batch").pool == "mean"


# ----- gradients ------------------------------------------------------------------------------

def test_detached_form_equals_recomputing_the_block_on_a_detached_input():
    """HU24's form: grad(CE + reg) = grad(CE) + grad of μ_SRR(f_ℓ(detach(Z^ℓ))) w.r.t. layer ℓ only."""
    model = _crate()
    x, y = _images()
    ell = 2
    with SRRRegularizer(model, layers=[ell], weight=0.7, eps=0.5) as reg:
        (F.cross_entropy(model(x), y) + reg()).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    _, layers = model.forward_layer_tokens(x)
    out = model.blocks()[ell](layers[ell].input.detach())  # recomputed on a detached input
    term = 0.7 * sparse_rate_reduction(out, model.layer_subspaces()[ell], 0.5, 0.1).mean()
    (F.cross_entropy(model(x), y) + term).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(got: dict, model) -> None:
    for name, p in model.named_parameters():
        torch.testing.assert_close(got.get(name), p.grad, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("scope", ["sample", "batch"])
@pytest.mark.parametrize("layers", [[0, 2], [0, 1, 2, 3]], ids=["two_layers", "every_layer"])
def test_gradients_equal_recomputing_every_regularised_block_on_a_detached_input(layers, scope):
    """Several layers at once, both scopes: the hooks' gradient = that of the loss written out by hand."""
    model = _crate()
    x, y = _images()
    with SRRRegularizer(model, layers=layers, weight=0.7, eps=0.5, lam=0.1, scope=scope, pool="cls") as reg:
        (F.cross_entropy(model(x), y) + reg()).backward()
    got = _grads(model)
    model.zero_grad()
    _, inter = model.forward_layer_tokens(x)
    U = model.layer_subspaces()
    terms = []
    for ell in layers:
        out = model.blocks()[ell](inter[ell].input.detach())  # (B, N, d), recomputed on a detached input
        if scope == "sample":
            terms.append(sparse_rate_reduction(out, U[ell], 0.5, 0.1).mean())
        else:  # the batch is one token set of one feature row (the CLS token) per sample
            terms.append(sparse_rate_reduction(out[:, 0], U[ell], 0.5, 0.1))
    (F.cross_entropy(model(x), y) + 0.7 * sum(terms) / len(terms)).backward()
    _assert_same_grads(got, model)


def test_detached_form_runs_each_block_once():
    model = _crate()
    calls = []
    model.blocks()[2].register_forward_hook(lambda *a: calls.append(1))
    with SRRRegularizer(model, layers=[2], weight=1.0) as reg:
        x, y = _images()
        (F.cross_entropy(model(x), y) + reg()).backward()
    assert len(calls) == 1


@pytest.mark.parametrize("detach", [True, False])
def test_crate_gradient_reaches_only_the_intended_parameters(detach):
    model = _crate()
    with SRRRegularizer(model, layers=[1], weight=1.0, detach_input=detach) as reg:
        model(_images()[0])
        reg().backward()
    touched = _touched(model)
    assert any(n.startswith("transformer.layers.1.") for n in touched)
    assert not any(n.startswith(("transformer.layers.2.", "transformer.layers.3.", "mlp_head")) for n in touched)
    earlier = {n for n in touched if n.startswith(("transformer.layers.0.", "to_patch", "pos_emb", "cls_token"))}
    assert (earlier == set()) == detach


@pytest.mark.parametrize("detach", [True, False])
def test_vit_gradient_reaches_only_the_intended_parameters(detach):
    vit = _tiny_vit()
    with SRRRegularizer(vit, layers=[1], weight=1.0, detach_input=detach) as reg:
        vit(torch.randn(4, 3, 32, 32, dtype=torch.float64))
        reg().backward()
    touched = _touched(vit)
    assert "encoder.layers.encoder_layer_1.self_attention.in_proj_weight" in touched  # the block and its U
    assert not any("encoder_layer_2" in n or n.startswith(("heads", "encoder.ln")) for n in touched)
    earlier = {n for n in touched if "encoder_layer_0" in n or n in ("class_token", "conv_proj.weight")}
    assert (earlier == set()) == detach


@pytest.mark.parametrize("policy", ["data", "learned"])
def test_resnet_gradient_reaches_only_the_regularised_stage(policy):
    resnet = torchvision.models.resnet18(num_classes=10)
    subspaces = FromData(heads=4) if policy == "data" else Learned(heads=4)
    with SRRRegularizer(resnet, layers=["layer3"], weight=1.0, subspaces=subspaces) as reg:
        resnet(torch.randn(4, 3, 32, 32))
        reg().backward()
    assert {n.split(".")[0] for n in _touched(resnet)} == {"layer3"}
    learned = list(reg.parameters())
    assert (len(learned) > 0) == (policy == "learned")
    assert all(p.grad is not None for p in learned)


@pytest.mark.parametrize("scope", ["sample", "batch"])
def test_class_conditioned_data_subspaces_fit_from_the_first_batch(scope):
    model = _crate()
    x, _ = _images(9)
    y = torch.arange(9) % 3
    policy = FromData(heads=3, grouping="labels")
    with SRRRegularizer(model, layers=[-1], scope=scope, subspaces=policy) as reg:
        model(x)
        first = reg(y)
        U = policy.subspaces(0)
        model(x)
        assert torch.equal(reg(), first) and policy.subspaces(0) is U  # fitted once, then frozen
    assert U.shape == (3, 64, 21) and not U.requires_grad


def test_learned_subspaces_train_and_stay_orthonormal():
    vit = _tiny_vit().float()
    reg = SRRRegularizer(vit, layers=[-1], weight=1.0, subspaces=Learned(heads=2, head_dim=8))
    optimizer = torch.optim.SGD(reg.parameters(), lr=1e-2)
    x = torch.randn(8, 3, 32, 32)
    values = []
    for _ in range(5):
        optimizer.zero_grad()
        vit(x)
        value = reg()
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert values[-1] < values[0]  # U moves to where the tokens compress better
    U = reg.policy.subspaces(0)
    W = U.transpose(1, 2).reshape(16, 32)
    torch.testing.assert_close(W @ W.T, torch.eye(16), atol=1e-4, rtol=0)
    reg.close()


# ----- hooks ----------------------------------------------------------------------------------

def test_hooks_are_removed_when_the_regulariser_is_closed():
    model = _crate()
    x, _ = _images()
    before = model(x)
    with SRRRegularizer(model, layers=[0, 3]) as reg:
        assert reg.active and model.blocks()[0]._forward_pre_hooks and model.blocks()[3]._forward_hooks
        model(x)
        reg()
    assert not reg.active
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="no tokens captured"):
        reg()


def test_calling_twice_without_a_forward_is_an_error():
    model = _crate()
    with SRRRegularizer(model) as reg:
        model(_images()[0])
        reg()
        with pytest.raises(RuntimeError, match="forward pass"):
            reg()


def test_no_grad_forward_is_left_untouched():
    model = _crate()
    x, _ = _images()
    with SRRRegularizer(model, layers=[1]) as reg, torch.no_grad():
        out = model(x)
        value = reg()
    assert not out.requires_grad and not value.requires_grad


def test_bad_arguments_are_named():
    model = _crate()
    with pytest.raises(ValueError, match="scope"):
        SRRRegularizer(model, scope="token")
    with pytest.raises(ValueError, match="weight"):
        SRRRegularizer(model, weight=-1.0)
    with pytest.raises(ValueError, match="pool"):
        SRRRegularizer(model, pool="max")
    with pytest.raises(ValueError, match="no module named"):
        SRRRegularizer(model, layers=["transformer.nope"])
    with pytest.raises(ValueError, match=r"shape \(K, d=64, p\)"):
        with SRRRegularizer(model, subspaces=Fixed(torch.randn(2, 5, 3))) as reg:
            model(_images()[0])
            reg()


# ----- numerics -------------------------------------------------------------------------------

def test_autocast_gives_finite_values_close_to_float32():
    model = _crate(torch.float32)
    x, y = _images(dtype=torch.float32)
    with SRRRegularizer(model, layers=[-1], weight=1.0) as reg:
        model(x)
        reference = reg().item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y) + reg()
        loss.backward()
    value = reg.parts["transformer.layers.3"].srr.item()
    assert torch.isfinite(loss) and abs(value - reference) < 0.05 * abs(reference)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6, 1e12])
@pytest.mark.parametrize("scope", ["sample", "batch"])
def test_extreme_token_scales_never_give_nan(scale, scope):
    """Large Gram matrices make float32 Cholesky fail; the rates retry in float64 instead of NaN."""
    layer = torch.nn.Linear(16, 16)
    model = torch.nn.Sequential(layer)
    U = torch.linalg.qr(torch.randn(16, 16)).Q.reshape(16, 4, 4).transpose(0, 1).contiguous()  # (4, 16, 4)
    with SRRRegularizer(model, layers=["0"], weight=1.0, subspaces=Fixed(U), scope=scope, pool="mean") as reg:
        model(scale * torch.randn(6, 10, 16))
        value = reg()
        value.backward()
    assert torch.isfinite(value) and torch.isfinite(layer.weight.grad).all()


# ----- effect in training ---------------------------------------------------------------------

def _train(weight: float, steps: int = 40) -> float:
    torch.manual_seed(0)
    model = create_model("crate_nano")
    ds = load_dataset("digits", split="train")
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    reg = SRRRegularizer(model, layers=[-1], weight=weight) if weight else None
    step = 0
    while step < steps:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y) + (reg() if reg is not None else 0.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    if reg is not None:
        reg.close()
    table = measure(model, ds, limit=128, progress=False)
    return table.select("out")[-1].srr


def test_training_with_the_regulariser_lowers_the_regularised_layers_srr():
    without, with_reg = _train(0.0), _train(0.05)
    assert with_reg < without - 5.0, (without, with_reg)  # about 50 vs 36 at 40 steps


# ----- the benchmark's floor ------------------------------------------------------------------

def test_the_benchmarks_floor_computes_the_rates_and_their_gradients():
    """The floor srr.bench.bench_regularizer times is the real arithmetic: R, R^c (E1, E2) and the
    gradients autograd gives (E5, E6), in float64 on fresh random tokens, for p <= N <= d."""
    from srr.bench.bench_regularizer import _floor_rates

    g = torch.Generator().manual_seed(5)
    Z = torch.randn(3, 9, 16, generator=g, dtype=torch.float64).requires_grad_()
    U = (torch.randn(2, 16, 4, generator=g, dtype=torch.float64) / 4).requires_grad_()
    R, Rc, grad_Z, grad_U = _floor_rates(Z, U, eps=0.5, backward=True)
    R_ref, Rc_ref = coding_rate(Z, 0.5), compressed_coding_rate(Z, U, 0.5)
    torch.testing.assert_close(R, R_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(Rc, Rc_ref, rtol=1e-12, atol=0)
    ref_Z, ref_U = torch.autograd.grad((Rc_ref - R_ref).sum(), (Z, U))
    torch.testing.assert_close(grad_Z, ref_Z, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_U, ref_U, rtol=1e-10, atol=1e-12)


# ----- site="projection": the MSSA input LN₁(Z^ℓ) through the model's own qkv ------------------------

PROJECTION_VARIANTS = ["crate", "crate_c", "crate_n", "crate_t", "crate_fix", "crate_identity", "crate_alpha"]


def _projection_crate(variant="crate", **kwargs):
    torch.manual_seed(0)  # patch 2: N = 17 tokens > p = 16 (p×p head Grams), < d = 64 (N×N Gram for R)
    return create_model("crate_nano", patch_size=2, variant=variant, **kwargs).double()


def _projection_direct(model, x, layers, *, eps, lam, detach):
    """η-free mean over ``layers`` of μ_SRR(LN₁(Z^ℓ)) written with srr.rates on X and U^ℓ (E1, E2, E4)."""
    _, inter = model.forward_layer_tokens(x)
    terms = []
    for ell in layers:
        block = model.blocks()[ell]
        Z = inter[ell].input.detach() if detach else inter[ell].input
        X = block[0].norm(Z)  # (B, N, d)
        U = block.subspaces
        l0 = (X != 0).sum((-2, -1)).to(X.dtype)  # ‖LN₁(Z^ℓ)‖₀
        terms.append((lam * l0 + compressed_coding_rate(X, U, eps) - coding_rate(X, eps)).mean())
    return sum(terms) / len(terms)


def _relative_error(got, want) -> float:
    return float(((got - want).abs().max() / want.abs().max()).detach())


@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("variant", PROJECTION_VARIANTS)
def test_projection_site_value_equals_the_rates_of_the_mssa_input(variant, detach):
    """Fresh random images, float64: the value from the model's own A = LN₁(Z)U equals srr.rates on LN₁(Z), U."""
    model = _projection_crate(variant)
    for seed in range(3):
        x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        with SRRRegularizer(model, layers=[0, 3], weight=0.3, eps=0.5, lam=0.1, detach_input=detach,
                            site="projection") as reg:
            model(x)
            value = reg()
        want = 0.3 * _projection_direct(model, x, [0, 3], eps=0.5, lam=0.1, detach=detach)
        assert _relative_error(value, want) < 1e-12
        X = model.blocks()[3][0].norm(model.forward_layer_tokens(x)[1][3].input)
        torch.testing.assert_close(reg.parts["transformer.layers.3"].R, coding_rate(X, 0.5).mean().detach())
        torch.testing.assert_close(reg.parts["transformer.layers.3"].l0, (X != 0).sum((-2, -1)).double().mean())


@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("variant", ["crate", "crate_t", "crate_alpha"])
def test_projection_site_gradient_equals_autograd_of_the_direct_computation(variant, detach):
    """With the task loss: plain form = autograd through everything; detached form (HU24) = the term on
    LN₁(detach(Z^ℓ)), so the term updates only LN₁^ℓ and U^ℓ and the task gradient is untouched."""
    model = _projection_crate(variant)
    x, y = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64), torch.arange(6)
    layers = [0, 2, 3]
    with SRRRegularizer(model, layers=layers, weight=0.7, eps=0.5, detach_input=detach, site="projection") as reg:
        (F.cross_entropy(model(x), y) + reg()).backward()
    got = _grads(model)
    model.zero_grad()
    term = 0.7 * _projection_direct(model, x, layers, eps=0.5, lam=0.1, detach=detach)
    (F.cross_entropy(model(x), y) + term).backward()
    _assert_same_grads(got, model)


def test_projection_site_detached_term_reaches_only_ln1_and_qkv():
    model = _projection_crate()
    x, _ = _images(6)
    with SRRRegularizer(model, layers=[2], site="projection", weight=1.0) as reg:
        model(x)
        reg().backward()
    assert _touched(model) == {"transformer.layers.2.0.norm.weight", "transformer.layers.2.0.norm.bias",
                               "transformer.layers.2.0.fn.qkv.weight"}


def test_projection_site_works_with_the_reference_backend():
    model = _projection_crate(backend="reference")
    x, _ = _images(4)
    with SRRRegularizer(model, layers=[1], site="projection", weight=1.0) as reg:
        model(x)
        value = reg()
    assert _relative_error(value, _projection_direct(model, x, [1], eps=0.1, lam=0.1, detach=True)) < 1e-12


@pytest.mark.parametrize("variant", ["crate_exact", "crate_derived", "tost"])
def test_projection_site_names_the_supported_variants(variant):
    torch.manual_seed(0)
    model = create_model("crate_nano", variant=variant)
    with pytest.raises(ValueError, match="supported variants: crate, crate_c"):
        SRRRegularizer(model, site="projection")
    assert not any(m._forward_hooks for m in model.modules())  # nothing was left hooked


def test_projection_site_arguments_and_hooks():
    model = _projection_crate()
    for kwargs in (dict(subspaces="data"), dict(scope="batch")):
        with pytest.raises(ValueError, match="subspaces='model' and scope='sample'"):
            SRRRegularizer(model, site="projection", **kwargs)
    with pytest.raises(ValueError, match="site must be"):
        SRRRegularizer(model, site="input")
    reg = SRRRegularizer(model, site="projection")
    with pytest.raises(RuntimeError, match="no projection captured"):
        reg()
    reg.close()
    assert not reg.active and not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("detach", [True, False])
def test_projection_site_under_bf16_autocast_is_close_to_float32(detach):
    torch.manual_seed(0)
    model = create_model("crate_nano", patch_size=2)
    x, y = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.arange(8)
    values = []
    for enabled in (False, True):
        with SRRRegularizer(model, layers=[0, 3], site="projection", detach_input=detach, weight=1.0) as reg:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                loss = F.cross_entropy(model(x), y) + reg()
            loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        model.zero_grad()
        values.append(reg.parts["transformer.layers.3"].srr)
    torch.testing.assert_close(values[1], values[0], rtol=1e-3, atol=0)


def test_a_layer_with_fewer_than_two_tokens_warns_once():
    """ResNet-18's layer4 at 32 px is a 1×1 map: one token per image, a degenerate SRR term
    (docs/guide-regularize.md); the regulariser says so, once."""
    import warnings

    model = torchvision.models.resnet18(num_classes=10)
    reg = SRRRegularizer(model, layers=["layer4"], weight=1e-3, subspaces=Learned(heads=4))
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match="layer4.*1 tokens per sample.*degenerate"):
        model(x)
        reg()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)
        reg()  # said once
    reg.close()
    ok = SRRRegularizer(model, layers=["layer2"], weight=1e-3, subspaces=Learned(heads=4))  # 4×4 map: 16 tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)
        ok()
    ok.close()


def test_each_site_is_one_strategy_behind_the_same_constructor():
    """``SRRRegularizer(site=...)`` stays the public factory; each site's hooks and value live in one object."""
    from srr.measurement.regularizer import _OutputSite, _ProjectionSite

    model = create_model("crate_nano")
    out, proj = SRRRegularizer(model), SRRRegularizer(model, site="projection")
    assert type(out._site) is _OutputSite and type(proj._site) is _ProjectionSite
    with pytest.raises(RuntimeError, match="no tokens captured"):
        out()
    with pytest.raises(RuntimeError, match="no projection captured"):
        proj()
    model(torch.randn(2, 1, 8, 8))
    assert torch.isfinite(out()) and torch.isfinite(proj()) and set(out.parts) == set(proj.parts)
    out.close(), proj.close()
    assert not out.active and not proj.active
