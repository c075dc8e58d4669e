"""Attention maps (srr/visualize.py, ``srr attention``): the maps equal softmax(τ A Aᵀ) recomputed from
the weights for every softmax variant, the fused forward never computes them, and the PNG is written."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from srr.cli import app
from srr.layers import MSSA
from srr.models import create_model
from srr.visualize import attention, patch_pca, plot_attention

SOFTMAX = ["crate", "crate_c", "crate_n", "crate_t", "crate_fix", "crate_identity", "crate_alpha"]
SMALL = dict(image_size=8, patch_size=2, in_chans=1, num_classes=5, dim=32, depth=3, heads=4, head_dim=8)
runner = CliRunner()


def small(variant="crate"):
    torch.manual_seed(0)
    return create_model("crate_nano", variant=variant, **SMALL).eval()


def images(n=3):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("variant", SOFTMAX)
@pytest.mark.parametrize("layer", [0, 2])
def test_maps_equal_softmax_of_the_scaled_gram_recomputed_from_the_weights(variant, layer):
    model, x = small(variant), images()
    _, tokens = model.forward_layer_tokens(x)
    block = model.blocks()[layer]
    norm, W = block[0].norm, block.compression.qkv.weight  # W: (K·p, d)
    z = F.layer_norm(tokens[layer].input, (32,), norm.weight, norm.bias, norm.eps)  # LN₁(Z^ℓ), (B, N, d)
    A = torch.einsum("bnd,kpd->bknp", z, W.reshape(4, 8, 32))  # A_k = Z U_k, (B, K, N, p)
    expected = torch.softmax(8 ** -0.5 * A @ A.transpose(-1, -2), dim=-1)  # (B, K, N, N)
    full = attention(model, x, layer=layer, full=True)
    assert full.shape == (3, 4, 17, 17)
    assert torch.allclose(full, expected, atol=1e-6)
    assert torch.allclose(attention(model, x, layer=layer), expected[:, :, 0, 1:], atol=1e-6)
    assert torch.allclose(full.sum(-1), torch.ones(3, 4, 17), atol=1e-6)


def test_the_fused_forward_never_builds_the_maps(monkeypatch):
    model, x = small(), images()
    expected = model(x)

    def forbidden(self, x):
        raise AssertionError("the fused forward computed the explicit attention maps")

    monkeypatch.setattr(MSSA, "attention", forbidden)
    assert torch.equal(model(x), expected)


@pytest.mark.parametrize("variant", ["crate_exact", "tost"])
def test_variants_without_softmax_attention_say_so(variant):
    with pytest.raises(ValueError, match="no softmax attention"):
        attention(small(variant), images())


def test_layers_are_0_based_and_checked():
    model, x = small(), images()
    assert torch.equal(attention(model, x, layer=-1), attention(model, x, layer=2))
    with pytest.raises(ValueError, match=r"layer must be an integer in \[0, 2\]"):
        attention(model, x, layer=3)


def test_patch_pca_is_in_the_unit_cube_and_separates_two_clusters():
    features = torch.cat([torch.zeros(1, 4, 6), torch.ones(1, 4, 6)], dim=1) + 0.01 * torch.randn(1, 8, 6)
    pcs = patch_pca(features)
    assert pcs.shape == (1, 8, 3) and pcs.min() >= 0 and pcs.max() <= 1
    assert (pcs[0, :4, 0] - pcs[0, 4:, 0].mean()).abs().min() > 0.5  # the first component splits them


def test_plot_attention_writes_a_png(tmp_path):
    from PIL import Image

    path = plot_attention(small(), images(2), tmp_path / "a.png", layer=1)
    with Image.open(path) as png:
        width, height = png.size
    assert width > height > 100  # 2 rows of 1 + 4 heads + PCA


def test_srr_attention_on_a_trained_run(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, [str(a) for a in ("train", "--out", out, "--epochs", 1, "--batch-size", 32,
                                                  "--train-subset", 64, "--measure-samples", 0, "--threads", 1,
                                                  "--quiet", "--device", "cpu")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["attention", str(out), "--images", "3", "--layer", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    png = out / "plots" / "attention_layer0.png"
    assert png.is_file() and str(png) in result.stdout.replace("\n", "")
    result = runner.invoke(app, ["attention", str(out), "--layer", "9"])
    assert result.exit_code == 2 and "--layer must be in [0, 3]" in result.stderr


def test_srr_attention_takes_the_classes_in_turn_and_labels_each_row(tmp_path, monkeypatch):
    """A class-sorted split (CIFAR's test folders) must not show only airplanes: the rows take the classes
    in turn and each says its true and predicted class."""
    import torch
    from typer.testing import CliRunner

    import srr.cli.attention as attention_cli
    import srr.visualize as visualize
    from srr.cli import app

    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    assert attention_cli.spread_over_classes(labels, 4) == [0, 3, 5, 1]
    assert attention_cli.spread_over_classes(labels, 20) == [0, 3, 5, 1, 4, 6, 2, 7]
    run = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(app, ["train", "--out", str(run), "--epochs", "1", "--train-subset", "64", "--batch-size",
                               "32", "--measure-samples", "0", "--threads", "1", "--quiet"]).exit_code == 0
    seen, real = {}, visualize.plot_attention

    def spy(model, images, path, *, layer=-1, title=None, row_labels=None):
        seen["rows"] = row_labels
        return real(model, images, path, layer=layer, title=title, row_labels=row_labels)

    monkeypatch.setattr(visualize, "plot_attention", spy)
    result = runner.invoke(app, ["attention", str(run), "--images", "3", "--out", str(tmp_path / "a.png")])
    assert result.exit_code == 0, result.output
    assert len(seen["rows"]) == 3 and all(r.startswith("true ") and "\npredicted " in r for r in seen["rows"])
    assert len({r.split("\n")[0] for r in seen["rows"]}) == 3  # three different classes
    assert (tmp_path / "a.png").stat().st_size > 0
