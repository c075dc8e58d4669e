"""Weights in and out (srr/models/pretrained.py): the folder format, every accepted source, strict
loading, and the two fine-tuning adaptations (a new head, an interpolated position embedding)."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from srr.models import CheckpointError, create_model, interpolate_pos_embedding, save_checkpoint

SMALL = dict(image_size=8, patch_size=2, in_chans=1, num_classes=5, dim=32, depth=2, heads=4, head_dim=8)


def small(**kw):
    torch.manual_seed(0)
    return create_model("crate_nano", **{**SMALL, **kw}).eval()


def images(model, n=2):
    c = model.config
    return torch.randn(n, c.in_chans, c.image_size, c.image_size, generator=torch.Generator().manual_seed(1))


def public_file(model, path):
    """A checkpoint as the public CRATE code's training script writes it: ``{"model": …}``, ``module.`` keys."""
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    return path


@pytest.mark.parametrize("variant", ["crate", "crate_t", "crate_alpha", "crate_exact"])
def test_save_pretrained_folder_round_trip_is_exact(tmp_path, variant):
    model = small(variant=variant, pool="mean", lam=0.2)
    folder = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["config"] == model.config.to_dict()
    loaded = create_model(pretrained=folder).eval()
    assert loaded.config == model.config
    assert torch.equal(loaded(images(model)), model(images(model)))
    # the safetensors file alone carries the config (metadata)
    alone = create_model(pretrained=folder / "model.safetensors").eval()
    assert torch.equal(alone(images(model)), model(images(model)))


@pytest.mark.parametrize("form", ["public_pth", "srr_checkpoint", "run_folder", "bare_safetensors"])
def test_every_source_loads_the_same_weights(tmp_path, form):
    from safetensors.torch import save_file

    model = small()
    if form == "public_pth":
        path, name = public_file(model, tmp_path / "crate.pth"), "crate_nano"
    elif form == "srr_checkpoint":
        path, name = save_checkpoint(model, tmp_path / "m.pt"), None
    elif form == "run_folder":
        save_checkpoint(model, tmp_path / "run" / "checkpoints" / "latest.pt")
        path, name = tmp_path / "run", None
    else:
        path, name = tmp_path / "w.safetensors", "crate_nano"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    overrides = SMALL if name else {}
    loaded = create_model(name, pretrained=path, **overrides).eval()
    assert torch.equal(loaded(images(model)), model(images(model)))


def test_public_checkpoint_is_loaded_strictly_naming_the_keys(tmp_path):
    model = small()
    sd = model.state_dict()
    sd["transformer.layers.0.1.fn.extra"] = torch.zeros(1)
    del sd["cls_token"]
    sd["transformer.layers.1.0.fn.qkv.weight"] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        create_model("crate_nano", pretrained=tmp_path / "bad.pth", **SMALL)
    message = str(info.value)
    for fragment in ("missing keys (1): ['cls_token']", "transformer.layers.0.1.fn.extra",
                     "transformer.layers.1.0.fn.qkv.weight: checkpoint (3, 3)"):
        assert fragment in message
    with pytest.raises(CheckpointError, match="pass the model name"):
        create_model(pretrained=public_file(small(), tmp_path / "p.pth"))


def test_a_new_class_count_reinitialises_only_the_head_and_says_so(tmp_path, caplog):
    model = small()
    path = public_file(model, tmp_path / "crate.pth")
    with caplog.at_level(logging.WARNING, logger="srr"):
        tuned = create_model("crate_nano", pretrained=path, **{**SMALL, "num_classes": 3}).eval()
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "new classifier head, re-initialised (5 -> 3 classes)" in notes[0]
    assert tuned.mlp_head[1].weight.shape == (3, 32)
    x = images(model)
    assert torch.equal(tuned.forward_features(x), model.forward_features(x))  # everything below the head kept


def test_a_new_image_size_interpolates_the_position_embedding_keeping_cls(tmp_path, caplog):
    model = small()
    folder = model.save_pretrained(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="srr"):
        tuned = create_model(pretrained=folder, image_size=16).eval()
    assert any("interpolated from 4x4 to 8x8 patches" in r.getMessage() for r in caplog.records)
    old, new = model.pos_embedding.detach(), tuned.pos_embedding.detach()
    assert new.shape == (1, 1 + 64, 32)
    assert torch.equal(new[:, 0], old[:, 0])
    # bicubic, recomputed independently on the (d, 4, 4) grid
    grid = old[0, 1:].T.reshape(1, 32, 4, 4)
    expected = torch.nn.functional.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
    assert torch.allclose(new[0, 1:], expected.reshape(32, 64).T, atol=1e-6)
    assert tuned(images(tuned)).shape == (2, 5)
    # the same size gives the same table back
    assert torch.allclose(interpolate_pos_embedding(old, grid=4), old, atol=1e-5)


def test_anything_else_that_does_not_fit_is_an_error_not_a_partial_load(tmp_path):
    path = public_file(small(), tmp_path / "crate.pth")
    with pytest.raises(CheckpointError, match="qkv.weight"):
        create_model("crate_nano", pretrained=path, **{**SMALL, "head_dim": 4})
    with pytest.raises(CheckpointError, match="to_patch_embedding"):
        create_model("crate_nano", pretrained=path, **{**SMALL, "patch_size": 4})
    with pytest.raises(CheckpointError, match="mlp_head.1.weight"):  # classes differ, but not asked for
        create_model("crate_nano", pretrained=path, **{k: v for k, v in SMALL.items() if k != "num_classes"})
    with pytest.raises(ValueError, match="not both"):
        create_model("crate_nano", pretrained=path, checkpoint=path)


def test_corrupt_or_missing_weights_give_one_clear_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="could not read weights"):
        create_model("crate_nano", pretrained=bad)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        create_model("crate_nano", pretrained=tmp_path / "nope.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        create_model("crate_nano", pretrained=tmp_path / "empty")


def test_grad_checkpointing_gives_the_same_gradients():
    model = small(dropout=0.0).train()
    x = images(model, 4)
    model(x).square().sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for a, p in zip(plain, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_layer_decay_scales_each_depth_and_covers_every_parameter_once():
    from srr.models import param_groups

    model = small()  # depth 2
    groups = param_groups(model, 0.05, layer_decay=0.5, lr=1.0)
    assert groups[0]["lr"] == 1.0  # the head's first: the schedule's reference rate
    by_name = {n: g for g in groups for n in g["names"]}
    assert sorted(by_name) == sorted(n for n, _ in model.named_parameters())
    assert by_name["mlp_head.1.weight"]["lr_scale"] == 1.0
    assert by_name["transformer.layers.1.0.fn.qkv.weight"]["lr_scale"] == 0.5
    assert by_name["transformer.layers.0.0.fn.qkv.weight"]["lr_scale"] == 0.25
    assert by_name["pos_embedding"]["lr_scale"] == by_name["to_patch_embedding.2.weight"]["lr_scale"] == 0.125
    assert by_name["pos_embedding"]["weight_decay"] == 0.0 and by_name["to_patch_embedding.2.weight"]["weight_decay"]
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(model, 0.05, layer_decay=0.0, lr=1.0)
