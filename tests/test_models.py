"""CRATE models (srr/models): registry, every variant, intermediates, and the public architecture.

``PublicCRATE`` below is a plain re-implementation of the public code's ``CRATE`` class
(Ma-Lab-Berkeley/CRATE ``model/crate.py``; MATH.md §4.1–4.3): shared Q=K=V projection, softmax
with temperature p^{-1/2}, an untied output Linear, the 3-matmul ISTA step, no ISTA residual.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from srr.models import (CRATE, CheckpointError, CRATEConfig, LayerTokens, create_model, list_models,
                        list_variants, load_public_state_dict, param_groups, register_model)
from srr.rates import compressed_coding_rate_grad


# ----- the public architecture, written plainly ------------------------------------------------
class PublicPreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class PublicAttention(nn.Module):
    """(E8)-(E9) as coded: w = qkv(x) used as Q, K and V; softmax(w wᵀ τ) w; untied output Linear."""

    def __init__(self, dim, heads, dim_head, temperature=None):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5 if temperature is None else temperature
        self.qkv = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.0))

    def forward(self, x):
        w = rearrange(self.qkv(x), "b n (h d) -> b h n d", h=self.heads)
        dots = torch.matmul(w, w.transpose(-1, -2)) * self.scale
        attn = torch.softmax(dots, dim=-1)
        out = torch.matmul(attn, w)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class PublicISTA(nn.Module):
    """(E10) with the public code's three matmuls: ReLU(x + η(x D − x Dᵀ D) − ηλ)."""

    def __init__(self, dim, step_size=0.1, lam=0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.kaiming_uniform_(self.weight)
        self.step_size, self.lambd = step_size, lam

    def forward(self, x):
        x1 = F.linear(x, self.weight, bias=None)
        grad_1 = F.linear(x1, self.weight.t(), bias=None)
        grad_2 = F.linear(x, self.weight.t(), bias=None)
        grad_update = self.step_size * (grad_2 - grad_1) - self.step_size * self.lambd
        return F.relu(x + grad_update)


class PublicTransformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, step_size, lam, temperature):
        super().__init__()
        self.layers = nn.ModuleList([
            nn.ModuleList([PublicPreNorm(dim, PublicAttention(dim, heads, dim_head, temperature)),
                           PublicPreNorm(dim, PublicISTA(dim, step_size, lam))])
            for _ in range(depth)
        ])

    def forward(self, x):
        for attn, ff in self.layers:
            grad_x = attn(x) + x
            x = ff(grad_x)
        return x


class PublicCRATE(nn.Module):
    def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads, dim_head, channels=3,
                 pool="cls", step_size=0.1, lam=0.1, temperature=None):
        super().__init__()
        num_patches = (image_size // patch_size) ** 2
        patch_dim = channels * patch_size**2
        self.patch_size = patch_size
        self.to_patch_embedding = nn.Sequential(nn.Identity(), nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim),
                                                nn.LayerNorm(dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.transformer = PublicTransformer(dim, depth, heads, dim_head, step_size, lam, temperature)
        self.pool = pool
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, img):
        p = self.patch_size
        x = rearrange(img, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
        x = self.to_patch_embedding(x)
        b, n, _ = x.shape
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.pos_embedding[:, : n + 1]
        x = self.transformer(x)
        x = x.mean(dim=1) if self.pool == "mean" else x[:, 0]
        return self.mlp_head(x)


def public_like(cfg: CRATEConfig) -> PublicCRATE:
    return PublicCRATE(image_size=cfg.image_size, patch_size=cfg.patch_size, num_classes=cfg.num_classes,
                       dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, dim_head=cfg.head_dim, channels=cfg.in_chans,
                       pool=cfg.pool, step_size=cfg.step_size, lam=cfg.lam, temperature=cfg.temperature)


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ----- helpers -----------------------------------------------------------------------------------
SMALL = dict(image_size=8, patch_size=2, in_chans=1, num_classes=5, dim=32, depth=2, heads=4, head_dim=8)


def small(variant: str, **kw) -> CRATE:
    torch.manual_seed(0)
    return create_model("crate_nano", variant=variant, **{**SMALL, **kw})


def images(model: CRATE, batch: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return torch.randn(batch, c.in_chans, c.image_size, c.image_size, generator=g)


# ----- every registered model --------------------------------------------------------------------
def _registered_small(name, **kw):
    """``name`` at its real width, on the smallest image its patch allows (2×2 patches)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        patch = create_model(name).config.patch_size
    return create_model(name, image_size=2 * patch, num_classes=3, **kw)


@pytest.mark.parametrize("name", list_models())
def test_registered_model_forward_is_finite_and_every_parameter_gets_a_gradient(name):
    model = _registered_small(name, depth=2)  # full depths: the slow test below
    _check_forward_backward(model)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_registered_model_at_full_depth_forward_backward(name):
    _check_forward_backward(_registered_small(name))


def _check_forward_backward(model):
    x = images(model, batch=2)
    logits = model(x)
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    logits.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


PUBLIC_PARAMS = {"crate_tiny": 6.09e6, "crate_small": 13.12e6, "crate_base": 22.80e6, "crate_large": 77.64e6}


@pytest.mark.parametrize("name", sorted(PUBLIC_PARAMS))
def test_public_configs_have_the_published_parameter_counts(name):
    with torch.device("meta"):
        model = create_model(name, image_size=224, patch_size=16, num_classes=1000)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - PUBLIC_PARAMS[name]) / PUBLIC_PARAMS[name] < 0.005, n
    cfg = model.config
    assert n == cfg.depth * (3 * cfg.dim**2 + 5 * cfg.dim) + _embedding_and_head_params(cfg)


def _embedding_and_head_params(cfg):
    d, pd = cfg.dim, cfg.patch_dim
    return 2 * pd + pd * d + d + 2 * d + (cfg.num_patches + 1) * d + d + 2 * d + d * cfg.num_classes + cfg.num_classes


# ----- every variant -----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list_variants())
def test_variant_forward_backward_every_parameter_gets_a_gradient(variant):
    model = small(variant)
    logits = model(images(model))
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


@pytest.mark.parametrize("variant", list_variants())
def test_variant_is_deterministic_under_a_seed(variant):
    a, b = small(variant), small(variant)
    x = images(a)
    assert torch.equal(a(x), b(x))
    assert torch.equal(a(x), a(x))


@pytest.mark.parametrize("variant", list_variants())
def test_features_intermediates_subspaces_dictionaries_have_documented_shapes(variant):
    model = small(variant).eval()
    cfg = model.config
    x = images(model)
    B, N, d = 3, cfg.num_patches + 1, cfg.dim
    feats = model.forward_features(x)
    assert feats.shape == (B, N, d)
    logits, layers = model.forward_layer_tokens(x)
    assert torch.equal(logits, model(x))
    assert len(layers) == cfg.depth and all(isinstance(t, LayerTokens) for t in layers)
    for t in layers:
        for field in LayerTokens._fields:
            assert getattr(t, field).shape == (B, N, d), field
    assert torch.equal(layers[-1].output, feats)
    for prev, nxt in zip(layers, layers[1:]):
        assert nxt.input is prev.output
    # each layer: Z^{ℓ+½} − Z^ℓ is the compression update of LN₁(Z^ℓ), and Z^{ℓ+1} is computed from LN₂(Z^{ℓ+½})
    for block, t in zip(model.blocks(), layers):
        torch.testing.assert_close(block[0].norm(t.input), t.mssa_input)
        torch.testing.assert_close(block[1].norm(t.half), t.ista_input)
        torch.testing.assert_close(block(t.input), t.output)
    U = model.layer_subspaces()
    assert len(U) == cfg.depth and all(u.shape == (cfg.heads, d, cfg.head_dim) for u in U)
    D = model.layer_dictionaries()
    m = cfg.expansion * d if variant == "crate_alpha" else d
    assert len(D) == cfg.depth and all(dd.shape == (d, m) for dd in D)
    assert model.forward_head(feats, pre_logits=True).shape == (B, d)


@pytest.mark.parametrize("variant", [v for v in list_variants() if v != "crate_alpha"])
def test_layer_outputs_after_ista_are_nonnegative(variant):
    model = small(variant, depth=3)
    _, layers = model.forward_layer_tokens(images(model) * 3)
    for t in layers:
        assert (t.output >= 0).all()
        assert (t.output > 0).any()  # and not trivially zero


def test_block_forward_hooks_see_layer_input_and_output():
    model = small("crate").eval()
    seen = []
    hooks = [b.register_forward_hook(lambda mod, inp, out: seen.append((inp[0], out))) for b in model.blocks()]
    x = images(model)
    _, layers = model.forward_layer_tokens(x)
    model(x)
    for h in hooks:
        h.remove()
    assert len(seen) == len(layers)
    for (zin, zout), t in zip(seen, layers):
        torch.testing.assert_close(zin, t.input)
        torch.testing.assert_close(zout, t.output)


# ----- the public architecture -------------------------------------------------------------------
@pytest.mark.parametrize("options", [
    dict(),
    dict(pool="mean"),
    dict(step_size=0.05, lam=0.3, temperature=0.5),
    dict(heads=2, head_dim=24),  # K·p ≠ d, as the public code allows
])
def test_crate_variant_matches_the_public_architecture_with_copied_weights(options):
    cfg = CRATEConfig(**{**SMALL, **options, "variant": "crate"})
    torch.manual_seed(0)
    ref = public_like(cfg)
    model = load_public_state_dict(CRATE(cfg), ref.state_dict())
    x = images(model, batch=4) * 2
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) < 1e-5
        ref64, model64 = ref.double(), model.double()
        assert rel_err(model64(x.double()), ref64(x.double())) < 1e-12


def test_crate_tiny_matches_the_public_architecture_to_float32_rounding():
    cfg = CRATEConfig(image_size=32, patch_size=8, num_classes=10)  # CRATE-Tiny widths and depth
    torch.manual_seed(0)
    ref = public_like(cfg)
    model = load_public_state_dict(CRATE(cfg), ref.state_dict())
    x = images(model, batch=2)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) < 1e-4


def test_public_checkpoint_file_with_wrappers_loads_and_gives_the_public_logits(tmp_path):
    cfg = create_model("crate_nano").config
    torch.manual_seed(0)
    ref = public_like(cfg)
    path = tmp_path / "public.pth"
    torch.save({"model": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}, path)
    model = create_model("crate_nano", checkpoint=path)
    x = images(model)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) < 1e-5
    with pytest.raises(CheckpointError, match="variant 'crate' only"):
        create_model("crate_nano", variant="crate_t", checkpoint=path)


def test_public_state_dict_with_a_bad_key_is_rejected_naming_it():
    cfg = CRATEConfig(**SMALL)
    sd = public_like(cfg).state_dict()
    sd["transformer.layers.0.1.fn.dictionary"] = sd.pop("transformer.layers.0.1.fn.weight")
    with pytest.raises(CheckpointError) as e:
        load_public_state_dict(CRATE(cfg), sd)
    assert "transformer.layers.0.1.fn.weight" in str(e.value)
    assert "transformer.layers.0.1.fn.dictionary" in str(e.value)


# ----- Hu et al.'s output variants and the exact step (MATH.md §4.1 table, E6) --------------------
def _reference_half(block, z, variant, cfg):
    """Z^{ℓ+½} from the formulas: o = concat_k softmax(A_k A_kᵀ τ) A_k, A = LN(Z) Wᵀ."""
    W = block.compression.qkv.weight  # (K·p, d)
    y = block[0].norm(z)
    if variant == "crate_exact":
        U = block.subspaces  # (K, d, p)
        return z - cfg.compression_step_size * compressed_coding_rate_grad(y, U, cfg.eps)
    a = rearrange(y @ W.t(), "b n (h p) -> b h n p", h=cfg.heads)
    tau = cfg.head_dim**-0.5
    o = rearrange(torch.softmax(a @ a.transpose(-1, -2) * tau, dim=-1) @ a, "b h n p -> b n (h p)")
    out = {"crate_c": o @ W, "crate_n": -(o @ W), "crate_t": o @ W.t()}[variant]
    return z + cfg.compression_step_size * out


@pytest.mark.parametrize("variant", ["crate_c", "crate_n", "crate_t", "crate_exact"])
def test_compression_half_step_follows_its_formula(variant):
    model = small(variant, depth=1).double()
    _, (t,) = model.forward_layer_tokens(images(model).double())
    ref = _reference_half(model.blocks()[0], t.input, variant, model.config)
    assert rel_err(t.half, ref) < 1e-10


def test_exact_step_lowers_the_compressed_coding_rate_for_a_small_step():
    from srr.rates import compressed_coding_rate

    model = small("crate_exact", depth=1, compression_step_size=0.05).double()
    _, (t,) = model.forward_layer_tokens(images(model).double())
    U = model.layer_subspaces()[0]
    eps = model.config.eps
    before = compressed_coding_rate(t.mssa_input, U, eps)
    after = compressed_coding_rate(t.mssa_input + (t.half - t.input), U, eps)
    assert (after < before).all()


@pytest.mark.parametrize("kappa", [0.3, "auto"])
def test_derived_variant_computes_the_exact_variant_with_copied_weights(kappa):
    exact = small("crate_exact", compression_step_size=kappa).double()
    derived = small("crate_derived", compression_step_size=kappa).double()
    state = {k: v for k, v in exact.state_dict().items() if ".fn." not in k}
    derived.load_state_dict(state, strict=False)  # embeddings, norms, head
    with torch.no_grad():
        for be, bd in zip(exact.blocks(), derived.blocks()):
            bd.compression.layer.U.copy_(be.subspaces)  # U^ℓ (K, d, p)
            bd.sparsification.layer.D.copy_(be.dictionary)  # D^ℓ (d, d)
    x = images(exact).double()
    with torch.no_grad():
        assert rel_err(derived(x), exact(x)) < 1e-9


# ----- options -----------------------------------------------------------------------------------
def test_vit_init_gives_small_embeddings_and_zero_biases():
    model = small("crate", init="vit", dim=64, heads=4, head_dim=16)
    assert 0.015 < model.pos_embedding.std() < 0.025 and model.cls_token.abs().max() < 0.1
    assert model.mlp_head[1].bias.abs().max() == 0
    public = small("crate", dim=64, heads=4, head_dim=16)
    assert 0.8 < public.pos_embedding.std() < 1.2


def test_dropout_and_drop_path_are_random_in_training_and_off_in_eval():
    model = small("crate_alpha", dropout=0.3, emb_dropout=0.2, drop_path=0.5)
    x = images(model)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    assert torch.equal(model(x), small("crate_alpha").eval()(x))


def test_reset_classifier_changes_the_head_and_config():
    model = small("crate")
    model.reset_classifier(7)
    assert model(images(model)).shape == (3, 7) and model.config.num_classes == 7
    model.reset_classifier(0)
    assert model(images(model)).shape == (3, model.config.dim)


def test_param_groups_exempt_norms_biases_and_embeddings_from_weight_decay():
    model = small("crate")
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {"pos_embedding", "cls_token", "mlp_head.1.bias", "transformer.layers.0.0.norm.weight",
            "to_patch_embedding.1.bias"} <= set(no_decay["names"])
    assert {"transformer.layers.0.0.fn.qkv.weight", "transformer.layers.0.1.fn.weight",
            "mlp_head.1.weight"} <= set(decay["names"])
    all_params = {id(p) for p in model.parameters()}
    grouped = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == len(all_params)
    torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in (decay, no_decay)])


# ----- errors ------------------------------------------------------------------------------------
def test_wrong_image_size_or_channels_names_expected_and_given():
    model = small("crate")
    with pytest.raises(ValueError, match=r"H=8, W=8.*got shape \(2, 1, 16, 16\)"):
        model(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"C=1.*got shape \(2, 3, 8, 8\)"):
        model(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"got shape \(1, 8, 8\)"):
        model(torch.randn(1, 8, 8))


def test_unknown_model_or_variant_lists_the_valid_names():
    with pytest.raises(ValueError, match="crate_tiny") as e:
        create_model("crate_huge")
    assert "crate_huge" in str(e.value)
    with pytest.raises(ValueError, match="crate_exact") as e:
        create_model("crate_nano", variant="crate_x")
    assert "crate_x" in str(e.value)
    with pytest.raises(TypeError, match="valid fields"):
        create_model("crate_nano", dimension=3)


@pytest.mark.parametrize("bad", [dict(image_size=10, patch_size=4), dict(step_size=0.0), dict(lam=-1.0),
                                 dict(pool="max"), dict(init="xavier"), dict(drop_path=1.0),
                                 dict(variant="crate_t", heads=3, head_dim=8), dict(temperature=-1.0),
                                 dict(compression_step_size="auto"), dict(patch_size=1)])
def test_invalid_config_values_raise_naming_the_field(bad):
    field = {"variant": "heads", "patch_size": "in_chans"}.get(next(iter(bad)), next(iter(bad)))
    with pytest.raises(ValueError, match=field):
        CRATEConfig(**{**SMALL, **bad})


def test_register_model_and_list_models_pattern():
    @register_model(name="test_only_crate_pico")
    def _pico(**kw):
        return CRATE(CRATEConfig(**{**SMALL, "dim": 16, "heads": 2, "head_dim": 8, **kw}))

    assert "test_only_crate_pico" in list_models("test_only_*")
    assert list_models("crate_t*") == ["crate_tiny"]
    assert create_model("test_only_crate_pico", num_classes=2)(torch.randn(1, 1, 8, 8)).shape == (1, 2)
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda **kw: None, name="test_only_crate_pico")


# ----- torch.compile -----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["crate", pytest.param("crate_t", marks=pytest.mark.slow),
                                     pytest.param("crate_alpha", marks=pytest.mark.slow)])
def test_fast_variants_trace_into_one_graph(variant):
    model = small(variant, depth=1).eval()
    x = images(model)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))


def test_exact_and_derived_variants_trace_into_one_graph():
    # no data-dependent branch (srr.linalg, srr._checks) and no eager-only derived layer: tests/test_compile.py
    for variant in ("crate_exact", "crate_derived"):
        model = small(variant, depth=1).eval()
        x = images(model)
        torch.testing.assert_close(torch.compile(model, backend="eager", fullgraph=True)(x), model(x))


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager_forward_and_backward():
    model = small("crate").train()
    x = images(model)
    compiled = torch.compile(model)
    out_c, out_e = compiled(x), model(x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-5)
    (g_c,) = torch.autograd.grad(out_c.sum(), model.pos_embedding)
    (g_e,) = torch.autograd.grad(out_e.sum(), model.pos_embedding)
    torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-5)


def test_renamed_names_keep_their_old_spelling_as_deprecated_aliases():
    """forward_intermediates (timm's name, not timm's contract) → forward_layer_tokens; CRATE.dropout (the
    embedding dropout) → emb_dropout; Step.smooth (an objective; Term.smooth is a bool) → Step.smooth_part."""
    from srr.derivation import derive_step
    from srr.objective import L1, LeastSquares

    model = create_model("crate_nano").eval()
    x = torch.randn(2, 1, 8, 8)
    logits, layers = model.forward_layer_tokens(x)
    with pytest.warns(DeprecationWarning, match="forward_layer_tokens"):
        old_logits, old_layers = model.forward_intermediates(x)
    assert torch.equal(logits, old_logits) and len(layers) == len(old_layers)
    with pytest.warns(DeprecationWarning, match="emb_dropout"):
        assert model.dropout is model.emb_dropout
    step = derive_step(LeastSquares() + L1(lam=1.0), step_size=1.0)
    with pytest.warns(DeprecationWarning, match="smooth_part"):
        assert str(step.smooth) == str(step.smooth_part)
    assert all(t.smooth for _, t in step.smooth_part.terms)
