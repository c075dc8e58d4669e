"""Specification of CIFAR reading: both layouts, the decode cache, batch augmentation, the real files.

Small class-folder trees are written here as JPEG/PNG; the real CIFAR-10 (JPEG) copy at
``../shared/data/cifar10`` is used where it exists (it does in CI).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from srr.data import load_dataset, random_flip
from srr.data.cifar import CIFAR10_CLASSES, decoded_split

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def _write_tree(root: Path, per_class: dict[str, int], *, classes=CIFAR10_CLASSES, fmt="png", seed=0):
    """``root/<split>/<class>/<i>.<fmt>``: images whose pixel (0, 0) encodes the class index."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = {}
    for split, n in per_class.items():
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                array[0, 0] = (10 * k, 0, 0)
                Image.fromarray(array).save(folder / f"{i:04d}.{fmt}")
                pixels[(split, name, i)] = array
    return pixels


def test_class_folders_load_in_cifar10_label_order(tmp_path):
    pixels = _write_tree(tmp_path / "data", {"train": 2, "test": 1})
    train = load_dataset("cifar10", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    test = load_dataset("cifar10", split="test", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert (len(train), len(test)) == (20, 10) and train.classes == list(CIFAR10_CLASSES)
    images, labels = decoded_split("cifar10", "train", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")[:2]
    assert images.dtype == torch.uint8 and images.shape == (20, 3, 32, 32)
    assert labels.tolist() == [k for k in range(10) for _ in range(2)]
    # lossless PNG: the decoded bytes are the written ones, channel-first
    assert torch.equal(images[3].permute(1, 2, 0), torch.from_numpy(pixels[("train", "automobile", 1)]))
    x, y = train[3]
    mean, std = train.info.mean[0], train.info.std[0]
    assert y == 1 and x[0, 0, 0].item() == pytest.approx((10 / 255 - mean) / std, abs=1e-5)


def test_the_decode_is_cached_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _write_tree(data, {"train": 1, "test": 1}, fmt="jpg")
    first = decoded_split("cifar10", "test", data_dir=data, cache_dir=cache)[0]
    assert len(list(cache.glob("cifar10-test-*.pt"))) == 1

    import srr.data.cifar as cifar

    def no_decode(self):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(cifar._FolderSource, "decode", no_decode)
    assert torch.equal(decoded_split("cifar10", "test", data_dir=data, cache_dir=cache)[0], first)
    monkeypatch.undo()

    from PIL import Image

    Image.new("RGB", (32, 32), (255, 255, 255)).save(data / "test" / "cat" / "0000.jpg")  # a changed file
    changed = decoded_split("cifar10", "test", data_dir=data, cache_dir=cache)[0]
    assert changed[3].float().mean() > 250 and not torch.equal(changed, first)
    assert len(list(cache.glob("cifar10-test-*.pt"))) == 2


def test_a_damaged_cache_is_rebuilt_not_trusted(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _write_tree(data, {"train": 1, "test": 1})
    good = decoded_split("cifar10", "test", data_dir=data, cache_dir=cache)[0]
    (path,) = cache.glob("cifar10-test-*.pt")
    path.write_bytes(b"not a tensor file")
    assert torch.equal(decoded_split("cifar10", "test", data_dir=data, cache_dir=cache)[0], good)


def test_cache_dir_defaults_to_the_environment(tmp_path, monkeypatch):
    _write_tree(tmp_path / "data", {"train": 1, "test": 1})
    monkeypatch.setenv("SRR_CACHE_DIR", str(tmp_path / "env-cache"))
    load_dataset("cifar10", split="test", data_dir=tmp_path / "data")
    assert list((tmp_path / "env-cache").glob("cifar10-test-*.pt"))


def test_wrong_class_folders_are_named_in_the_error(tmp_path):
    _write_tree(tmp_path, {"train": 1, "test": 1}, classes=("cats", "dogs"))
    with pytest.raises(ValueError, match="class folders") as error:
        load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert "airplane" in str(error.value) and "dogs" in str(error.value)


def test_augmentation_crops_and_flips_whole_batches(tmp_path):
    _write_tree(tmp_path / "data", {"train": 2, "test": 1})
    train = load_dataset("cifar10", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", augment=True)
    images = train.tensors[0]
    torch.manual_seed(0)
    out = train.augment_batch(images)
    assert out.shape == images.shape and train.max_shift == 4 and train.flip
    assert not torch.equal(out, images)
    # each output is the input shifted by at most 4 px (and maybe mirrored): some 24×24 window matches
    for a, b in zip(out, images):
        found = any(torch.equal(a[:, 4:28, 4:28], c[:, 4 + dy:28 + dy, 4 + dx:28 + dx])
                    for c in (b, b.flip(-1)) for dy in range(-4, 5) for dx in range(-4, 5))
        assert found
    plain = load_dataset("cifar10", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert torch.equal(plain.augment_batch(images), images)


def test_random_flip_mirrors_about_half_and_only_left_right():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5).repeat(200, 1, 1, 1)
    out = random_flip(x, generator=torch.Generator().manual_seed(0))
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert ((out == x).flatten(1).all(1) | mirrored).all()
    assert 0.4 < mirrored.float().mean().item() < 0.6


@pytest.mark.skipif(not REAL.is_dir(), reason="the real CIFAR-10 copy is not beside this checkout")
def test_real_cifar10_test_split_has_1000_images_per_class(tmp_path):
    test = load_dataset("cifar10", split="test", data_dir=REAL, cache_dir=tmp_path)
    images, labels = test.tensors
    assert images.shape == (10000, 3, 32, 32) and torch.isfinite(images).all()
    assert torch.bincount(labels).tolist() == [1000] * 10 and test.classes == list(CIFAR10_CLASSES)
    # standardised with CIFAR-10's constants: roughly zero mean, unit variance per channel
    assert images.mean((0, 2, 3)).abs().max() < 0.1
    assert (images.std((0, 2, 3)) - 1).abs().max() < 0.1


@pytest.mark.skipif(not REAL.is_dir(), reason="the real CIFAR-10 copy is not beside this checkout")
def test_srr_train_runs_on_real_cifar10_from_the_command_line(tmp_path):
    """The acceptance command of the CIFAR recipe, on a few images: ``srr train --dataset cifar10 --data-dir``."""
    from typer.testing import CliRunner

    from srr.cli import app

    from srr.data.cifar import resolve_cache_dir

    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--model", "crate_micro", "--dataset", "cifar10", "--data-dir", str(REAL), "--out", str(out),
        "--epochs", "1", "--batch-size", "32", "--train-subset", "64", "--measure-samples", "8", "--threads", "1",
        "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "cifar10" and 0 <= summary["test_accuracy"] <= 1
    assert list(resolve_cache_dir(None).glob("cifar10-train-*.pt"))  # decoded once, into the cache


def test_decoding_many_images_shows_a_progress_bar(tmp_path, monkeypatch, capsys):
    import srr.data.cifar as cifar

    _write_tree(tmp_path / "data", {"train": 1, "test": 1})
    monkeypatch.setattr(cifar, "DECODE_PROGRESS_MIN", 5)  # 10 images: "many" here
    decoded_split("cifar10", "test", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    err = capsys.readouterr().err
    assert "decoding cifar10 test" in err and "10/10" in err
    decoded_split("cifar10", "test", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert "decoding" not in capsys.readouterr().err  # the cache: nothing to decode
