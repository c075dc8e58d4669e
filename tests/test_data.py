"""Specification of `srr.data`: the datasets, their files on disk, and a reproducible order.

File-backed datasets are tested on tiny files this module writes in the real formats
(CIFAR python pickles, MNIST idx, an ImageFolder of PNGs): no network is used.
"""
import os
import pickle
from pathlib import Path
import struct

import numpy as np
import pytest
import torch

from srr.data import (
    DatasetNotFoundError,
    EpochSampler,
    as_tensors,
    dataset_info,
    list_datasets,
    load_dataset,
    make_loader,
    make_subspaces,
    random_shift,
)

# ----------------------------------------------------------------------------- digits


def test_digits_splits_are_standardised_images_of_ten_classes():
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    images, labels = as_tensors(train)
    assert images.shape == (len(train), 1, 8, 8) and images.dtype == torch.float32
    assert len(train) + len(test) == 1797 and len(test) == pytest.approx(0.2 * 1797, abs=1)
    assert torch.isfinite(images).all()
    assert abs(images.mean().item()) < 1e-4 and images.std().item() == pytest.approx(1.0, abs=1e-2)
    assert labels.unique().tolist() == list(range(10)) == as_tensors(test)[1].unique().tolist()
    assert train.info.num_classes == 10 and train.info.in_chans == 1 and len(train.classes) == 10


def test_digits_splits_are_disjoint_and_the_same_every_time():
    train = as_tensors(load_dataset("digits", split="train"))[0]
    test = as_tensors(load_dataset("digits", split="test"))[0]
    train_rows = {tuple(row.tolist()) for row in train.flatten(1)}
    test_rows = {tuple(row.tolist()) for row in test.flatten(1)}
    assert len(train_rows) == len(train) and not train_rows & test_rows  # digits has no duplicate images
    again = as_tensors(load_dataset("digits", split="train", seed=123))[0]
    assert torch.equal(train, again)


def test_digits_stratified_split_keeps_class_proportions():
    train_counts = as_tensors(load_dataset("digits", split="train"))[1].bincount().float()
    test_counts = as_tensors(load_dataset("digits", split="test"))[1].bincount().float()
    assert torch.allclose(test_counts / train_counts, torch.full((10,), 0.25), atol=0.02)


def test_digits_augmentation_shifts_by_at_most_one_pixel_onto_background():
    dataset = load_dataset("digits", augment=True)
    image = dataset.tensors[0][0].clone()
    torch.manual_seed(0)
    shifted = [dataset[0][0] for _ in range(30)]
    candidates = [
        torch.nn.functional.pad(image, (1, 1, 1, 1), value=dataset.fill)[:, 1 + dy : 9 + dy, 1 + dx : 9 + dx]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    ]
    assert all(any(torch.equal(s, c) for c in candidates) for s in shifted)
    assert any(not torch.equal(s, image) for s in shifted)
    assert torch.equal(dataset.tensors[0][0], image)  # the stored data is never augmented


def test_random_shift_moves_each_image_of_a_batch_independently():
    images = torch.zeros(64, 1, 5, 5)
    images[:, :, 2, 2] = 1.0
    shifted = random_shift(images, generator=torch.Generator().manual_seed(0))
    positions = shifted.flatten(1).argmax(1)
    assert shifted.sum().item() == 64  # the centre pixel never leaves a 5x5 image under a 1-pixel shift
    assert positions.unique().numel() == 9  # all 3x3 offsets occur


def test_digits_resizes_to_image_size():
    dataset = load_dataset("digits", split="test", image_size=16)
    assert dataset[0][0].shape == (1, 16, 16) and dataset.info.image_size == 16


# -------------------------------------------------------------------------- subspaces


def test_noiseless_subspace_samples_lie_in_their_own_class_subspace():
    samples, labels, bases = make_subspaces(
        300, dim=20, num_subspaces=4, subspace_dim=3, seed=1, dtype=torch.float64
    )
    assert samples.shape == (300, 20) and labels.shape == (300,) and bases.shape == (4, 20, 3)
    assert torch.allclose(bases.mT @ bases, torch.eye(3, dtype=torch.float64).expand(4, 3, 3), atol=1e-12)
    own = bases[labels]  # (n, D, p)
    projected = torch.einsum("ndp,nep,ne->nd", own, own, samples)
    assert (samples - projected).norm(dim=1).max() < 1e-10
    other = bases[(labels + 1) % 4]
    residual_other = samples - torch.einsum("ndp,nep,ne->nd", other, other, samples)
    assert residual_other.norm(dim=1).min() > 1e-3  # and not in another class's subspace


def test_make_subspaces_is_deterministic_under_seed_and_generator():
    kwargs = dict(dim=16, num_subspaces=3, subspace_dim=2, noise=0.1)
    first, second = make_subspaces(50, seed=7, **kwargs), make_subspaces(50, seed=7, **kwargs)
    third = make_subspaces(50, generator=torch.Generator().manual_seed(7), **kwargs)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(first, second, third))
    assert not torch.equal(first[0], make_subspaces(50, seed=8, **kwargs)[0])


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(dim=4, num_subspaces=2, subspace_dim=5), "subspace_dim"),
        (dict(dim=0, num_subspaces=2, subspace_dim=1), "dim"),
        (dict(dim=4, num_subspaces=2, subspace_dim=1, noise=-1.0), "noise"),
        (dict(dim=4, num_subspaces=2, subspace_dim=1, seed=0, generator=torch.Generator()), "seed or gen"),
    ],
)
def test_make_subspaces_rejects_bad_arguments_by_name(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        make_subspaces(10, **kwargs)


def test_subspaces_dataset_train_and_test_share_the_subspaces():
    options = dict(num_subspaces=3, subspace_dim=2, noise=0.0, num_train=60, num_test=30, seed=4)
    train, test = load_dataset("subspaces", **options), load_dataset("subspaces", split="test", **options)
    assert torch.equal(train.bases, test.bases)
    assert torch.equal(as_tensors(train)[0], as_tensors(load_dataset("subspaces", **options))[0])
    images, labels = as_tensors(test)
    assert images.shape == (30, 1, 8, 8) and train.info.num_classes == 3
    samples = images.flatten(1).double() * test.info.std[0]
    own = train.bases[labels].double()
    assert (samples - torch.einsum("ndp,nep,ne->nd", own, own, samples)).norm(dim=1).max() < 1e-4
    assert dataset_info("subspaces", **{k: v for k, v in options.items() if k != "seed"}) == train.info


# ------------------------------------------------------------- file-backed datasets


def _pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def _cifar_batch(rng, n, num_classes, label_key):
    data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)  # a row is R, then G, then B planes
    return {"data": data, label_key: rng.integers(0, num_classes, n).tolist()}


@pytest.fixture
def cifar_root(tmp_path):
    """A tiny CIFAR-10 and CIFAR-100 in the official python-pickle layout."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        _pickle(folder / f"data_batch_{i}", _cifar_batch(rng, 4, 10, "labels"))
    _pickle(folder / "test_batch", _cifar_batch(rng, 6, 10, "labels"))
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    folder = tmp_path / "cifar-100-python"
    _pickle(folder / "train", _cifar_batch(rng, 12, 100, "fine_labels"))
    _pickle(folder / "test", _cifar_batch(rng, 5, 100, "fine_labels"))
    _pickle(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)]})
    return tmp_path


CIFAR_TEST_FILE = {"cifar10": "cifar-10-batches-py/test_batch", "cifar100": "cifar-100-python/test"}


@pytest.mark.parametrize("name, num_train, num_test", [("cifar10", 20, 6), ("cifar100", 12, 5)])
def test_cifar_loads_the_official_pickle_format(cifar_root, name, num_train, num_test, tmp_path):
    cache = tmp_path / "cache"
    train = load_dataset(name, data_dir=cifar_root, augment=True, cache_dir=cache)
    test = load_dataset(name, split="test", data_dir=cifar_root, cache_dir=cache)
    assert sorted(p.name.split("-")[1] for p in cache.glob(f"{name}-*.pt")) == ["test", "train"]  # here, not ~
    assert (len(train), len(test)) == (num_train, num_test)
    image, label = test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= label < train.info.num_classes
    assert train[0][0].shape == (3, 32, 32) and len(train.classes) == train.info.num_classes
    # pixel (row 0, col 1) of channel 0 is byte 1 of the flat record: channel-major, row-major
    raw = pickle.loads((cifar_root / CIFAR_TEST_FILE[name]).read_bytes())
    mean, std = test.info.mean[0], test.info.std[0]
    assert image[0, 0, 1].item() == pytest.approx((raw["data"][0, 1] / 255 - mean) / std, abs=1e-5)


def _write_idx(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    type_code, ndim = 0x08, array.ndim  # 0x08: unsigned byte
    header = struct.pack(">BBBB", 0, 0, type_code, ndim) + struct.pack(f">{ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_loads_raw_idx_files(tmp_path, name, folder):
    rng = np.random.default_rng(0)
    raw = tmp_path / folder / "raw"
    images = {"train": rng.integers(0, 256, (7, 28, 28)), "t10k": rng.integers(0, 256, (3, 28, 28))}
    for prefix, array in images.items():
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", array)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, len(array)))
    train = load_dataset(name, data_dir=tmp_path, augment=True)
    test = load_dataset(name, split="test", data_dir=tmp_path)
    assert (len(train), len(test)) == (7, 3) and train.info.num_classes == 10
    assert train[0][0].shape == (1, 28, 28)
    mean, std = test.info.mean[0], test.info.std[0]
    assert test[0][0][0, 0, 1].item() == pytest.approx((images["t10k"][0, 0, 1] / 255 - mean) / std, abs=1e-5)
    resized = load_dataset(name, split="test", data_dir=tmp_path, image_size=32)
    assert resized[0][0].shape == (1, 32, 32) and resized.info.image_size == 32


def test_imagefolder_loads_a_tree_of_pngs(tmp_path):
    from PIL import Image

    for split, per_class in (("train", 3), ("val", 2)):
        for k, colour in enumerate(("red", "blue")):
            folder = tmp_path / split / f"class_{k}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (10 + i, 12), colour).save(folder / f"{i}.png")
    train = load_dataset("imagefolder", data_dir=tmp_path, image_size=16, augment=True)
    test = load_dataset("imagefolder", split="test", data_dir=tmp_path, image_size=16)
    assert (len(train), len(test)) == (6, 4) and train.classes == ["class_0", "class_1"]
    assert train.info.num_classes == 2 and dataset_info("imagefolder", data_dir=tmp_path).image_size == 32
    images, labels = as_tensors(test)
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [0, 0, 1, 1]
    red, blue = images[0].mean((1, 2)), images[-1].mean((1, 2))
    assert red[0] > red[2] and blue[2] > blue[0]


def test_imagefolder_rejects_test_classes_that_differ_from_train(tmp_path):
    from PIL import Image

    for split, name in (("train", "cat"), ("test", "dog")):
        (tmp_path / split / name).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / split / name / "0.png")
    with pytest.raises(ValueError, match="class folders"):
        load_dataset("imagefolder", split="test", data_dir=tmp_path)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion-mnist"])
def test_missing_files_name_the_path_and_suggest_download(tmp_path, name):
    with pytest.raises(DatasetNotFoundError, match="--download") as error:
        load_dataset(name, data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, ValueError)


def test_missing_imagefolder_names_the_path_and_the_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train/<class>") as error:
        load_dataset("imagefolder", data_dir=tmp_path)
    assert str(tmp_path / "train") in str(error.value)


def test_unknown_dataset_error_lists_the_valid_names():
    with pytest.raises(ValueError, match="got 'imagenet21k'") as error:
        load_dataset("imagenet21k")
    assert all(name in str(error.value) for name in list_datasets())
    with pytest.raises(ValueError, match="got 'cifar'"):
        dataset_info("cifar")


@pytest.mark.parametrize(
    "kwargs, argument", [(dict(split="val"), "split"), (dict(image_size=0), "image_size")]
)
def test_bad_options_are_named(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        load_dataset("digits", **kwargs)


def test_every_registered_dataset_has_metadata_without_files(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    for name in list_datasets():
        info = dataset_info(name, data_dir=tmp_path)
        assert info.name == name and info.num_classes >= 1 and len(info.mean) == info.in_chans


# -------------------------------------------------------------------------- sampler


def test_sampler_order_depends_only_on_seed_and_epoch():
    sampler, fresh = EpochSampler(100, seed=3), EpochSampler(100, seed=3)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    fresh.set_epoch(1)  # a resumed run jumps straight to epoch 1
    assert list(fresh) == epoch1 and epoch0 != epoch1
    assert sorted(epoch0) == list(range(100))
    other_seed = EpochSampler(100, seed=4)
    assert list(other_seed) != epoch0
    assert list(EpochSampler(10, shuffle=False)) == list(range(10))


def test_sampler_resumes_mid_epoch():
    sampler = EpochSampler(50, seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start=20)
    assert list(sampler) == full[20:] and len(sampler) == 30


@pytest.mark.parametrize("n, world_size, drop_last", [(103, 4, False), (103, 4, True), (3, 5, False)])
def test_distributed_ranks_partition_the_epoch_permutation(n, world_size, drop_last):
    ranks = [
        EpochSampler(n, seed=1, rank=r, world_size=world_size, drop_last=drop_last)
        for r in range(world_size)
    ]
    for sampler in ranks:
        sampler.set_epoch(5)
    shares = [list(sampler) for sampler in ranks]
    assert len({len(share) for share in shares}) == 1 and len(shares[0]) == len(ranks[0])
    interleaved = [index for column in zip(*shares) for index in column]
    permutation = ranks[0].permutation().tolist()
    if drop_last:
        assert interleaved == permutation[: len(interleaved)] and len(interleaved) > n - world_size
    else:
        assert interleaved[:n] == permutation and set(interleaved) == set(range(n))


def test_make_loader_is_reproducible_and_validates_batch_size():
    dataset = load_dataset("subspaces", num_train=40)
    first = make_loader(dataset, batch_size=8, shuffle=True, seed=0)
    second = make_loader(dataset, batch_size=8, shuffle=True, seed=0)
    second.sampler.set_epoch(0)
    labels = [y for _, y in first]
    assert len(labels) == 5 and all(torch.equal(a, b) for a, b in zip(labels, (y for _, y in second)))
    first.sampler.set_epoch(1)
    assert not all(torch.equal(a, b) for a, b in zip(labels, (y for _, y in first)))
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="batch_size"):
            make_loader(dataset, batch_size=bad, shuffle=True, seed=0)
    with pytest.raises(ValueError, match="rank and world_size"):
        make_loader(dataset, batch_size=8, shuffle=True, seed=0, distributed=True)
    shard = make_loader(dataset, batch_size=8, shuffle=True, seed=0, distributed=True, rank=1, world_size=2)
    assert sum(len(y) for _, y in shard) == 20


def test_no_test_writes_the_users_cache():
    """tests/conftest.py points $SRR_CACHE_DIR at this session's folder: a test that passes no cache_dir
    leaves nothing in ~/.cache/srr."""
    from srr.data.cifar import resolve_cache_dir

    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "srr"
    assert resolve_cache_dir(None) != home
