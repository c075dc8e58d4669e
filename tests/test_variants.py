"""One registry of variants (srr/models/variants.py) answers "which variants exist" everywhere."""
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from srr.cli import app
from srr.layers import MSSA
from srr.measurement.projection import SUPPORTED
from srr.models import VARIANTS, CRATEConfig, create_model, list_variants
from srr.models.variants import REGISTRY

runner = CliRunner()


def unwrapped(*args) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.replace("│", " ").split())


def test_every_list_of_variants_is_the_registry():
    assert list_variants() == list(VARIANTS) == list(REGISTRY)
    train_help, models = unwrapped("train", "--help"), unwrapped("models")
    docs = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    for name, variant in REGISTRY.items():
        assert name in train_help and name in models, name
        assert f"- `{name}`: {variant.description}" in docs, name  # experiments/make_cli_doc.py
    with pytest.raises(ValueError, match="variant"):
        CRATEConfig(variant="crate_z")


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_variant_builds_what_its_entry_says(name):
    variant = REGISTRY[name]
    heads, head_dim = (2, 8) if variant.needs_square else (2, 4)
    model = create_model("crate_nano", variant=name, num_classes=3, image_size=8, patch_size=4, dim=16,
                         heads=heads, head_dim=head_dim, depth=1, in_chans=1)
    blocks = [m for m in model.modules() if hasattr(m, "sparsification_residual")]
    assert blocks, name
    assert blocks[0].sparsification_residual == variant.sparsification_residual
    assert isinstance(blocks[0].compression, MSSA) == variant.qkv_projection == (name in SUPPORTED)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    if variant.needs_square:
        with pytest.raises(ValueError, match="heads\\*head_dim == dim"):
            CRATEConfig(variant=name, dim=16, heads=2, head_dim=4)
