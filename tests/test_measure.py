"""srr.measure: per-layer μ_SRR tables, token hooks, subspace policies, global-batch rates (HU24 §5)."""
from __future__ import annotations

import csv
import io
import json

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from srr import measure as srr_measure
from srr.data import load_dataset, make_subspaces
from srr.measurement import SITES, FromData, FromModel, Learned, Measurement, TokenSite, measure
from srr.measurement.subspaces import heads_to_subspaces
from srr.measurement.tokens import TokenCapture, default_sites, to_tokens
from srr.models import create_model
from srr.rates import coding_rate, compressed_coding_rate, rates_from_gram, sparse_rate_reduction


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", split="train")
    return torch.stack([ds[i][0] for i in range(48)]), torch.stack([torch.as_tensor(ds[i][1]) for i in range(48)])


@pytest.fixture(scope="module")
def crate():
    torch.manual_seed(0)
    return create_model("crate_nano").double().eval()


def _tiny_vit():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=10)


# ----- CRATE: the table equals a plain computation from the model's own intermediates -----------

def test_crate_measurement_equals_plain_computation_from_intermediates(crate, digits):
    x = digits[0].double()
    result = measure(crate, x, batch_size=16, eps=0.5, lam=0.1, progress=False)
    assert len(result) == 3 * crate.config.depth and result.sites == list(SITES)
    with torch.no_grad():
        _, layers = crate.forward_layer_tokens(x)
    for row in result:
        tokens = layers[row.layer]
        Z = {"in": tokens.input, "half": tokens.half, "out": tokens.output}[row.site]
        U = crate.blocks()[row.layer].subspaces.detach()
        assert row.module == f"transformer.layers.{row.layer}"
        assert _rel(row.R, coding_rate(Z, 0.5).mean().item()) < 1e-10
        assert _rel(row.Rc, compressed_coding_rate(Z, U, 0.5).mean().item()) < 1e-10
        assert _rel(row.srr, sparse_rate_reduction(Z, U, 0.5, 0.1).mean().item()) < 1e-10
        assert abs(row.zero_fraction - (Z == 0).double().mean().item()) < 1e-12
        assert _rel(row.l1, Z.abs().sum((-2, -1)).mean().item()) < 1e-10
        assert row.dR == pytest.approx(row.R - row.Rc, rel=1e-12)
    outs = [layers[ell].output for ell in range(crate.config.depth)]
    expected = sum(sparse_rate_reduction(Z, b.subspaces.detach(), 0.5, 0.1).mean()
                   for Z, b in zip(outs, crate.blocks()))
    assert _rel(result.srr, expected.item() / len(outs)) < 1e-10


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 5))
def test_fast_crate_measurement_equals_the_rates_of_each_site_on_random_images(seed, batch):
    """measure reads each token set in place, sharing R, ‖Z‖₀, ‖Z‖₁ between Z^{ℓ+1} and Z^{ℓ+1}'s "in" site:
    per image it must give exactly the rates functions' values (float64, relative error)."""
    torch.manual_seed(seed)
    model = create_model("crate_nano", depth=3).double().eval()
    x = torch.randn(batch, 1, 8, 8, dtype=torch.float64) * torch.rand(()).item() * 3
    result = measure(model, x, eps=0.3, lam=0.2, progress=False)
    with torch.no_grad():
        _, layers = model.forward_layer_tokens(x)
    for row in result:
        t = layers[row.layer]
        Z = {"in": t.input, "half": t.half, "out": t.output}[row.site]
        U = model.blocks()[row.layer].subspaces.detach()
        assert _rel(row.R, coding_rate(Z, 0.3).mean().item()) < 1e-10
        assert _rel(row.Rc, compressed_coding_rate(Z, U, 0.3).mean().item()) < 1e-10
        assert _rel(row.srr, sparse_rate_reduction(Z, U, 0.3, 0.2).mean().item()) < 1e-10
        assert row.l0 == (Z != 0).sum((-2, -1)).double().mean().item()
        assert _rel(row.l1, Z.abs().sum((-2, -1)).mean().item()) < 1e-12


def test_a_layer_output_is_the_next_layers_input(crate, digits):
    result = measure(crate, digits[0].double(), progress=False)
    for ell in range(crate.config.depth - 1):
        out, nxt = result.select("out")[ell], result.select("in")[ell + 1]
        assert (out.R, out.l0, out.l1) == (nxt.R, nxt.l0, nxt.l1)


def test_a_subset_of_sites_gives_the_same_rows(crate, digits):
    x = digits[0][:8].double()
    full = measure(crate, x, progress=False)
    for sites in (("out",), ("half", "in")):
        part = measure(crate, x, sites=sites, progress=False)
        assert part.rows == [r for r in full if r.site in sites]
    with pytest.raises(ValueError, match="sites must be"):
        measure(crate, x, sites=("ista",), progress=False)


def test_measure_accepts_loaders_datasets_and_limits():
    model = create_model("crate_nano")
    ds = load_dataset("digits", split="test")
    loader = torch.utils.data.DataLoader(ds, batch_size=20)
    a = measure(model, loader, limit=50, progress=True)
    b = measure(model, ds, batch_size=7, limit=50, progress=False)
    assert a.info["samples"] == b.info["samples"] == 50
    for ra, rb in zip(a, b):
        assert _rel(ra.srr, rb.srr) < 1e-4


def test_measure_restores_the_training_flag(digits):
    model = create_model("crate_nano")
    model.train()
    measure(model, digits[0][:4], progress=False)
    assert model.training


# ----- other models: hooks and policies ------------------------------------------------------

def test_vit_measurement_uses_block_outputs_and_query_heads():
    vit = _tiny_vit().double().eval()
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    result = measure(vit, x, progress=False)
    tokens = vit._process_input(x)
    tokens = torch.cat([vit.class_token.expand(6, -1, -1), tokens], 1) + vit.encoder.pos_embedding
    for row, block in zip(result, vit.encoder.layers):
        tokens = block(tokens)
        W_q = block.self_attention.in_proj_weight[:32]  # (d, d): query rows, 2 heads of 16
        U = W_q.reshape(2, 16, 32).transpose(1, 2).detach()
        assert _rel(row.srr, sparse_rate_reduction(tokens.detach(), U, 0.1, 0.1).mean().item()) < 1e-10


def test_resnet_feature_maps_become_tokens():
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    result = measure(resnet, torch.randn(8, 3, 32, 32), subspaces=FromData(heads=4), progress=False)
    assert [r.module for r in result] == ["layer1", "layer2", "layer3", "layer4"]
    with TokenCapture(resnet, [TokenSite("layer2")], detach=True) as cap:
        resnet(torch.randn(2, 3, 32, 32))
        assert cap.tokens["layer2"].shape == (2, 4 * 4, 128)  # (B, H·W, C)


def test_model_policy_needs_attention():
    with pytest.raises(ValueError, match="no attention heads"):
        measure(torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 32, 32), progress=False)
    with pytest.raises(ValueError, match="FromData"):
        resnet = torchvision.models.resnet18(num_classes=10)
        measure(resnet, torch.randn(2, 3, 32, 32), subspaces="data", progress=False)


def test_to_tokens_layouts():
    assert to_tokens(torch.zeros(2, 5, 3)).shape == (2, 5, 3)
    fmap = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    tokens = to_tokens(fmap)
    assert tokens.shape == (2, 20, 3) and torch.equal(tokens[1, 7], fmap[1, :, 1, 2])
    assert to_tokens(torch.zeros(2, 3)).shape == (2, 1, 3)
    with pytest.raises(ValueError, match="token site"):
        to_tokens(torch.zeros(2))


def test_default_sites_and_capture_hooks_are_removed(crate):
    assert [s.module for s in default_sites(crate)] == [f"transformer.layers.{i}" for i in range(crate.config.depth)]
    expected = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    assert [s.module for s in default_sites(_tiny_vit())] == expected
    with pytest.raises(ValueError, match="no default token sites"):
        default_sites(torch.nn.Linear(2, 2))
    with TokenCapture(crate, default_sites(crate)) as cap:
        assert cap.active and crate.transformer.layers[0]._forward_hooks
    assert not cap.active and not any(m._forward_hooks or m._forward_pre_hooks for m in crate.modules())


class _TimmAttention(torch.nn.Module):  # the attribute layout of timm's Attention
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.qkv = num_heads, torch.nn.Linear(dim, 3 * dim)

    def forward(self, x):
        return x + self.qkv(x)[..., : x.shape[-1]]


class _TimmBlock(torch.nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.attn = _TimmAttention(dim, num_heads)

    def forward(self, x):
        return self.attn(x)


def test_from_model_splits_a_timm_style_qkv_into_heads():
    model = torch.nn.Module()
    model.blocks = torch.nn.Sequential(_TimmBlock(12, 3), _TimmBlock(12, 3))
    model.forward = lambda x: model.blocks(x)
    assert [s.module for s in default_sites(model)] == ["blocks.0", "blocks.1"]
    for projection, third in (("q", 0), ("k", 1), ("v", 2)):
        policy = FromModel(projection=projection)
        policy.bind(model, list(model.blocks))
        W = model.blocks[1].attn.qkv.weight[12 * third: 12 * (third + 1)]  # (d, d)
        assert torch.equal(policy.subspaces(1), W.reshape(3, 4, 12).transpose(1, 2))
    result = measure(model, torch.randn(5, 7, 12), progress=False)
    assert [r.module for r in result] == ["blocks.0", "blocks.1"]


def test_heads_to_subspaces_matches_crate_subspaces(crate):
    block = crate.blocks()[0]
    assert torch.equal(heads_to_subspaces(block.compression.qkv.weight, crate.config.heads), block.subspaces)


def test_from_data_recovers_a_union_of_subspaces():
    X, labels, bases = make_subspaces(600, dim=24, num_subspaces=3, subspace_dim=4, seed=1, dtype=torch.float64)
    for grouping in ("kmeans", "labels"):
        policy = FromData(heads=3, head_dim=4, grouping=grouping)
        policy.bind(None, [None])
        U = policy.fit([X[:, None]], labels).subspaces(0).double()  # tokens (600, 1, 24) -> U (3, 24, 4)
        torch.testing.assert_close(U.mT @ U, torch.eye(4, dtype=torch.float64).expand(3, 4, 4), atol=1e-6, rtol=0)
        projectors = U @ U.mT
        truth = bases @ bases.mT
        # every true subspace is found: its projector matches one fitted projector
        distances = torch.cdist(truth.flatten(1), projectors.flatten(1))  # (3, 3)
        assert distances.min(1).values.max() < 1e-5


def test_learned_subspaces_are_orthonormal_parameters():
    policy = Learned(heads=3, head_dim=4, dim=16)
    policy.bind(torch.nn.Linear(1, 1), [torch.nn.Identity()])
    U = policy.subspaces(0)
    W = U.transpose(1, 2).reshape(12, 16)
    torch.testing.assert_close(W @ W.T, torch.eye(12), atol=1e-5, rtol=0)
    assert U.requires_grad and len(list(policy.parameters())) > 0


# ----- the table ------------------------------------------------------------------------------

def test_measurement_saves_prints_and_plots(crate, digits, tmp_path):
    result = measure(crate, digits[0][:8].double(), progress=False)
    text = result.to_csv(tmp_path / "m.csv")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "m.csv").read_text())))
    assert text == (tmp_path / "m.csv").read_text() and len(rows) == len(result)
    assert float(rows[4]["srr"]) == result[4].srr and rows[4]["site"] == result[4].site
    result.to_json(tmp_path / "m.json")
    again = Measurement.from_json(tmp_path / "m.json")
    assert again.rows == result.rows and again.info == json.loads(result.to_json())["info"]
    png = result.plot(tmp_path / "m.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = str(result)
    assert "Rc" in printed and "│ in   │" in printed and printed.count("transformer.layers.") == len(result)
    assert result.__rich__().row_count == len(result)
    assert result.column("Rc", "half") == [r.Rc for r in result.select("half")]
    with pytest.raises(ValueError, match="site must be one of"):
        result.select("nowhere")


def test_the_package_is_callable_as_measure(crate, digits):
    a = srr_measure(crate, digits[0][:4].double(), progress=False)
    assert a.rows == measure(crate, digits[0][:4].double(), progress=False).rows


def test_non_finite_tokens_are_an_error():
    vit = _tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        measure(vit, x, progress=False)


def test_bad_arguments_are_named():
    vit = _tiny_vit()
    with pytest.raises(ValueError, match="eps"):
        measure(vit, torch.randn(2, 3, 32, 32), eps=0, progress=False)
    with pytest.raises(TypeError, match="data must be"):
        measure(vit, 3, progress=False)
    with pytest.raises(ValueError, match="no module named"):
        measure(vit, torch.randn(2, 3, 32, 32), layers=["encoder.nope"], progress=False)
    with pytest.raises(ValueError, match="out of range"):
        measure(vit, torch.randn(2, 3, 32, 32), layers=[5], progress=False)


# ----- rates from a Gram matrix (the distributed path) ----------------------------------------

@given(n=st.integers(1, 12), d=st.integers(2, 8), K=st.integers(1, 3), seed=st.integers(0, 2**16),
       scale=st.floats(1e-2, 1e2))
def test_rates_from_gram_equal_the_rates_of_the_tokens(n, d, K, seed, scale):
    g = torch.Generator().manual_seed(seed)
    Z = scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    U = torch.randn(K, d, 2, generator=g, dtype=torch.float64)
    R, Rc = rates_from_gram(Z.T @ Z, n, U, 0.5)
    assert _rel(R.item(), coding_rate(Z, 0.5).item()) < 1e-9
    assert _rel(Rc.item(), compressed_coding_rate(Z, U, 0.5).item()) < 1e-9


def test_the_old_site_name_mssa_in_still_reads_the_block_input_with_a_warning(crate, digits):
    """"mssa_in" named Z^ℓ while LayerTokens.mssa_input is LN₁(Z^ℓ); the site is "in" now."""
    x = digits[0][:8].double()
    with pytest.warns(DeprecationWarning, match="'mssa_in' is now 'in'"):
        result = measure(crate, x, sites=("mssa_in",), progress=False)
    assert list(result.sites) == ["in"]
    with pytest.warns(DeprecationWarning):
        assert result.select("mssa_in") == result.select("in")
