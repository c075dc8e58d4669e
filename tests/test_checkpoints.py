"""Checkpoints (srr/models/checkpoints.py): our format round trip, strict loading, unreadable files.

Loading a public-code state dict into ``variant="crate"`` against the public architecture is
tested in test_models.py, next to the re-implementation of that architecture.
"""
from __future__ import annotations

import os

import pytest
import torch

from srr.models import CheckpointError, create_model, load_public_state_dict, read_checkpoint, save_checkpoint

SMALL = dict(image_size=8, patch_size=2, in_chans=1, num_classes=5, dim=32, depth=2, heads=4, head_dim=8)


def small(variant="crate", **kw):
    torch.manual_seed(0)
    return create_model("crate_nano", variant=variant, **{**SMALL, **kw})


def x_for(model):
    c = model.config
    return torch.randn(2, c.in_chans, c.image_size, c.image_size, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("variant", ["crate", "crate_t", "crate_exact", "crate_alpha", "crate_derived"])
def test_round_trip_rebuilds_the_model_from_the_file_alone(tmp_path, variant):
    model = small(variant, pool="mean", lam=0.2, init="vit").eval()
    path = save_checkpoint(model, tmp_path / "sub" / "m.pt", extra={"epoch": 4})
    loaded = create_model(checkpoint=path).eval()
    assert loaded.config == model.config
    x = x_for(model)
    assert torch.equal(loaded(x), model(x))
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["extra"] == {"epoch": 4} and raw["config"]["variant"] == variant
    assert os.listdir(path.parent) == ["m.pt"]  # no temporary file left behind


def test_saving_over_an_existing_checkpoint_replaces_it(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(small(), path)
    model = small(lam=0.3)
    save_checkpoint(model, path)
    assert create_model(checkpoint=path).config.lam == 0.3


def test_arguments_given_with_a_checkpoint_override_its_config(tmp_path):
    path = save_checkpoint(small(), tmp_path / "m.pt")
    assert create_model(checkpoint=path, dropout=0.1).config.dropout == 0.1
    with pytest.raises(CheckpointError, match="mlp_head.1.weight"):
        create_model(checkpoint=path, num_classes=7)
    with pytest.raises(CheckpointError, match="crate_tiny"):
        create_model("crate_tiny", checkpoint=path)


def test_strict_loading_names_missing_unexpected_and_mismatched_keys(tmp_path):
    model = small()
    sd = model.state_dict()
    sd.pop("transformer.layers.1.0.fn.qkv.weight")
    sd["transformer.layers.9.1.fn.weight"] = torch.zeros(32, 32)
    sd["mlp_head.1.weight"] = torch.zeros(3, 32)
    with pytest.raises(CheckpointError) as e:
        load_public_state_dict(small(), sd)
    msg = str(e.value)
    assert "missing keys (1): ['transformer.layers.1.0.fn.qkv.weight']" in msg
    assert "unexpected keys (1): ['transformer.layers.9.1.fn.weight']" in msg
    assert "mlp_head.1.weight: checkpoint (3, 32) vs model (5, 32)" in msg


def test_our_checkpoint_with_a_foreign_key_is_rejected(tmp_path):
    path = save_checkpoint(small(), tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["extra_param"] = torch.zeros(1)
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="extra_param"):
        create_model(checkpoint=path)


def test_corrupt_truncated_or_missing_files_give_clear_errors(tmp_path):
    good = save_checkpoint(small(), tmp_path / "good.pt")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(2048))
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match="could not read checkpoint") as e:
            create_model(checkpoint=path)
        assert str(path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        create_model(checkpoint=tmp_path / "nowhere.pt")
    not_a_dict = tmp_path / "list.pt"
    torch.save([1, 2], not_a_dict)
    with pytest.raises(CheckpointError, match="must hold a dict"):
        read_checkpoint(not_a_dict)


def test_a_public_state_dict_needs_a_model_name(tmp_path):
    path = tmp_path / "public.pth"
    torch.save(small().state_dict(), path)
    with pytest.raises(CheckpointError, match="pass the model name"):
        create_model(checkpoint=path)
    model = create_model("crate_nano", checkpoint=path, **SMALL)
    assert torch.equal(model(x_for(model)), small().eval()(x_for(model)))


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": small().state_dict(), "obj": object()}, path)  # not loadable with weights_only
    with pytest.raises(CheckpointError, match="could not read"):
        create_model("crate_nano", checkpoint=path, **SMALL)


def test_both_readers_refuse_another_format_version_in_the_same_words(tmp_path):
    """One check (srr.models.checkpoints.check_version) for create_model(checkpoint=) and (pretrained=)."""
    import torch

    from srr.models import CheckpointError, create_model, save_checkpoint

    model = create_model("crate_nano")
    path = tmp_path / "m.pt"
    save_checkpoint(model, path)
    obj = torch.load(path, weights_only=True)
    obj["version"] = 99
    torch.save(obj, path)
    messages = []
    for kwargs in ({"checkpoint": path}, {"pretrained": path}):
        with pytest.raises(CheckpointError) as error:
            create_model("crate_nano", **kwargs)
        messages.append(str(error.value))
    assert messages[0] == messages[1] and "format version 99; this srr reads version 1" in messages[0]
