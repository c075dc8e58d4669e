"""The data pipeline at ImageNet scale (issue 20): the ``imagenet`` layout, ImageNet-style crops,
augmentation from torchvision / timm, mixup / cutmix soft targets, repeated augmentation, ``fake`` data,
the batch decode stage, and per-sample seeds (ranks differ; resume with workers is exact)."""
import json

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from srr.data import Augmentation, BatchMix, EpochSampler, dataset_info, list_datasets, load_dataset
from srr.data.augment import EVAL_CROP_RATIO, parse_randaugment
from srr.train import TrainConfig, train
from srr.train.callbacks import Callback
from srr.train.data import TrainBatches, eval_batches, load_run_data


def write_jpegs(root, *, splits=(("train", 6), ("val", 2)), classes=("cat", "dog"), size=(50, 38), seed=0):
    """JPEG class folders under ``root``: random smooth images of ``size`` (w, h), one colour bias per class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, per_class in splits:
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                small = rng.integers(0, 255, (4, 5, 3)).astype(np.uint8)
                small[..., k % 3] = 230
                Image.fromarray(small).resize(size, Image.BILINEAR).save(folder / f"{i}.jpg", quality=90)
    return root


# ------------------------------------------------------------------------------------------- layouts


def test_imagenet_reads_train_and_val_and_carves_no_validation_by_default(tmp_path):
    write_jpegs(tmp_path, splits=(("train", 5), ("val", 3)))
    assert {"imagenet", "fake"} <= set(list_datasets())
    train_split = load_dataset("imagenet", data_dir=tmp_path)
    test = load_dataset("imagenet", split="test", data_dir=tmp_path)
    assert (len(train_split), len(test)) == (10, 6) and test.classes == ["cat", "dog"]
    assert dataset_info("imagenet", data_dir=tmp_path).image_size == 224 and train_split[0][0].shape == (3, 224, 224)
    data = load_run_data(TrainConfig(dataset="imagenet", data_dir=str(tmp_path), image_size=16, measure_samples=0))
    assert data.val is None and len(data.train) == 10 and len(data.test) == 6
    asked = load_run_data(TrainConfig(dataset="imagenet", data_dir=str(tmp_path), image_size=16, val_fraction=0.2,
                                      measure_samples=0))
    assert len(asked.val) == 2 and len(asked.train) == 8
    folder = load_run_data(TrainConfig(dataset="imagefolder", data_dir=str(tmp_path), measure_samples=0))
    assert len(folder.val) == 1  # imagefolder keeps the 10 % default


def test_imagenet_needs_val_not_test(tmp_path):
    write_jpegs(tmp_path, splits=(("train", 1), ("test", 1)))
    with pytest.raises(FileNotFoundError, match="val"):
        load_dataset("imagenet", split="test", data_dir=tmp_path)


# -------------------------------------------------------------------------------------- transforms


def test_evaluation_resizes_to_s_over_0875_then_takes_the_centre(tmp_path):
    from torchvision.transforms import v2

    write_jpegs(tmp_path, splits=(("train", 1), ("val", 1)), size=(100, 80))
    test = load_dataset("imagenet", split="test", data_dir=tmp_path, image_size=64)
    from srr.data.imagefolder import decode
    from torchvision.io import read_file

    raw = decode(read_file(test.samples[0][0]))  # (3, 80, 100)
    resized = v2.functional.resize(raw, round(64 / EVAL_CROP_RATIO), antialias=True)  # shorter side 73
    expected = v2.functional.center_crop(resized, [64, 64]).float() / 255
    mean, std = torch.tensor(test.info.mean).view(3, 1, 1), torch.tensor(test.info.std).view(3, 1, 1)
    assert torch.allclose(test[0][0], (expected - mean) / std, atol=1e-5)


def test_training_crop_is_random_resized_from_64_px_and_pad_crop_below(tmp_path):
    from torchvision.transforms import v2

    write_jpegs(tmp_path, splits=(("train", 1), ("val", 1)))
    big = load_dataset("imagefolder", data_dir=tmp_path, image_size=64, augment=True)
    small = load_dataset("imagefolder", data_dir=tmp_path, image_size=32, augment=True)
    rrc = [t for t in big.transform.transforms if isinstance(t, v2.RandomResizedCrop)]
    assert len(rrc) == 1 and rrc[0].scale == (0.08, 1.0) and tuple(rrc[0].size) == (64, 64)
    pads = [t for t in small.transform.transforms if isinstance(t, v2.RandomCrop)]
    assert len(pads) == 1 and list(pads[0].padding) == [4, 4, 4, 4]
    assert not any(isinstance(t, v2.RandomResizedCrop) for t in small.transform.transforms)
    forced = load_dataset("imagefolder", data_dir=tmp_path, image_size=32, augment=True,
                          augmentation=Augmentation(crop="rrc"))
    assert any(isinstance(t, v2.RandomResizedCrop) for t in forced.transform.transforms)
    torch.manual_seed(0)
    crops = torch.stack([big[0][0] for _ in range(4)])
    assert crops.shape == (4, 3, 64, 64) and not torch.equal(crops[0], crops[1])


def test_pad_crop_keeps_the_aspect_ratio(tmp_path):
    """A 2:1 image is not squashed: the shorter side goes to S and the centre is kept."""
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        left_red = np.zeros((20, 40, 3), np.uint8)
        left_red[:, :20, 0] = 255
        left_red[:, 20:, 2] = 255
        Image.fromarray(left_red).save(tmp_path / split / "a" / "0.png")
    image = load_dataset("imagefolder", split="test", data_dir=tmp_path, image_size=10)[0][0]
    assert image.shape == (3, 10, 10)
    red = image[0] > image[2]
    assert red[:, :4].all() and not red[:, 6:].any()  # a squash to 10x10 would keep red on the left half only


# ---------------------------------------------------------------------------------------- policies


@pytest.mark.parametrize("text, expected", [("2,9", (2, 9)), ("rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5-inc1")])
def test_randaugment_accepts_n_m_and_timm_strings(text, expected):
    assert parse_randaugment(text) == expected


@pytest.mark.parametrize("field, value, message", [
    ("randaugment", "9", "randaugment must be 'N,M'"), ("randaugment", "2,40", "randaugment"),
    ("train_crop", "square", "train_crop must be one of"), ("random_erasing", 1.5, "random_erasing"),
    ("mixup", -1.0, "mixup"), ("repeated_aug", 0, "repeated_aug"), ("decode_device", "tpu", "decode_device"),
])
def test_bad_augmentation_options_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_randaugment_and_trivialaugment_exclude_each_other():
    with pytest.raises(ValueError, match="randaugment and trivialaugment"):
        TrainConfig(randaugment="2,9", trivialaugment=True)


@pytest.mark.parametrize("augmentation, kind", [
    (Augmentation(randaugment="2,9"), "RandAugment"), (Augmentation(randaugment="rand-m9-mstd0.5-inc1"), "RandAugment"),
    (Augmentation(trivialaugment=True), "TrivialAugmentWide"), (Augmentation(random_erasing=1.0), "RandomErasing"),
])
def test_policies_come_from_torchvision_or_timm_and_change_the_images(tmp_path, augmentation, kind):
    write_jpegs(tmp_path, splits=(("train", 4), ("val", 1)), size=(64, 64))
    plain = load_dataset("imagefolder", data_dir=tmp_path, image_size=32, augment=True,
                         augmentation=Augmentation(crop="pad"))
    policy = load_dataset("imagefolder", data_dir=tmp_path, image_size=32, augment=True,
                          augmentation=Augmentation(crop="pad", randaugment=augmentation.randaugment,
                                                    trivialaugment=augmentation.trivialaugment,
                                                    random_erasing=augmentation.random_erasing))
    names = [type(t).__name__ for t in policy.transform.transforms]
    assert kind in names and kind not in [type(t).__name__ for t in plain.transform.transforms]
    changed = 0
    for i in range(len(plain)):
        torch.manual_seed(i)
        a = plain[i][0]
        torch.manual_seed(i)
        b = policy[i][0]
        changed += not torch.equal(a, b)
    assert changed >= len(plain) // 2


def test_in_memory_data_gets_the_policy_on_its_batches():
    plain = load_dataset("digits", augment=True)
    policy = load_dataset("digits", augment=True, augmentation=Augmentation(random_erasing=1.0))
    assert plain.policy is None and policy.policy is not None
    torch.manual_seed(0)
    batch = policy.augment_batch(policy.tensors[0][:8])
    torch.manual_seed(0)
    assert not torch.equal(batch, plain.augment_batch(plain.tensors[0][:8]))
    assert load_dataset("digits", split="test", augmentation=Augmentation(random_erasing=1.0)).policy is None


def test_per_item_data_gets_the_policy_after_its_transform(tmp_path):
    from test_data import _write_idx

    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    for prefix, n in (("train", 4), ("t10k", 2)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    plain = load_dataset("mnist", data_dir=tmp_path, augment=True)
    erased = load_dataset("mnist", data_dir=tmp_path, augment=True, augmentation=Augmentation(random_erasing=1.0))
    torch.manual_seed(0)
    a = torch.stack([plain[i][0] for i in range(4)])
    torch.manual_seed(0)
    b = torch.stack([erased[i][0] for i in range(4)])
    assert a.shape == b.shape == (4, 1, 28, 28) and not torch.equal(a, b)


# ----------------------------------------------------------------------------------- mixup / cutmix


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixing_gives_soft_targets_that_sum_to_one(mixup, cutmix):
    mix = BatchMix(5, mixup=mixup, cutmix=cutmix)
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 5
    torch.manual_seed(0)
    mixed, targets = mix(images, labels)
    assert mixed.shape == images.shape and targets.shape == (8, 5)
    assert torch.allclose(targets.sum(-1), torch.ones(8))
    assert ((targets > 0).sum(-1) <= 2).all() and not torch.equal(mixed, images)
    rolled = labels.roll(1)  # torchvision's MixUp / CutMix mix each image with its neighbour in the batch
    lam = targets[torch.arange(8), labels]
    assert torch.allclose(lam + targets[torch.arange(8), rolled] * (rolled != labels), torch.ones(8))


def test_a_run_with_mixup_and_cutmix_trains_on_soft_targets(tmp_path):
    config = TrainConfig(out=str(tmp_path / "r"), train_subset=64, epochs=1, batch_size=32, measure_samples=0,
                         srr_weight=0.0, threads=1, mixup=0.8, cutmix=1.0, log_every=1)
    result = train(config)
    row = result.metrics[-1]
    assert result.global_step == 2 and np.isfinite(row["train_loss"]) and 0 <= row["train_accuracy"] <= 1


# ------------------------------------------------------------------------------ repeated augmentation


@pytest.mark.parametrize("world_size", [1, 3])
def test_repeated_augmentation_sends_copies_to_different_ranks(world_size):
    n, k = 12, 3
    shares = []
    for rank in range(world_size):
        sampler = EpochSampler(n, seed=1, rank=rank, world_size=world_size, repeats=k)
        sampler.set_epoch(2)
        shares.append(list(sampler))
    assert all(len(share) == n // world_size for share in shares)  # an epoch keeps its length
    everything = [i for share in shares for i in share]
    assert len(set(everything)) == n // k  # n / K distinct images, each K times
    if world_size == k:
        for image in set(everything):  # the K copies of an image sit on K different ranks
            assert sorted(r for r, share in enumerate(shares) if image in share) == [0, 1, 2]
    else:
        assert all(everything[i] == everything[i - i % k] for i in range(len(everything)))


# ---------------------------------------------------------------------------------------------- fake


def test_fake_data_is_imagenet_shaped_and_the_same_every_time():
    info = dataset_info("fake")
    assert (info.num_classes, info.image_size, info.in_chans) == (1000, 224, 3)
    train_split = load_dataset("fake")
    assert len(train_split) == 1_281_167 and train_split[5][0].shape == (3, 224, 224)
    small = load_dataset("fake", image_size=24, num_classes=7, num_train=10)
    again = load_dataset("fake", image_size=24, num_classes=7, num_train=10)
    assert len(small) == 10 and small[3][0].shape == (3, 24, 24) and 0 <= small[3][1] < 7
    assert torch.equal(small[3][0], again[3][0]) and small[3][1] == again[3][1]
    assert not torch.equal(small[3][0], small[4][0])
    assert not torch.equal(small.raw(3)[0], load_dataset("fake", image_size=24, seed=1, num_train=10).raw(3)[0])


def test_fake_training_runs_with_no_files(tmp_path):
    result = train(TrainConfig(dataset="fake", image_size=16, model="crate_nano", train_subset=32, epochs=1,
                               batch_size=16, measure_samples=0, srr_weight=0.0, num_workers=0, threads=1,
                               out=str(tmp_path / "r")))
    assert result.global_step == 2 and result.test_accuracy is not None


# -------------------------------------------------------------------------------------- GPU decode


def test_gpu_decode_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error is for machines without it")
    write_jpegs(tmp_path)
    with pytest.raises(ValueError, match="decode_device must be 'cpu' on a machine without CUDA"):
        load_dataset("imagefolder", data_dir=tmp_path, decode_device="cuda")
    with pytest.raises(ValueError, match="decode_device must be 'cpu' for 'digits', which is held in memory"):
        load_dataset("digits", decode_device="cuda")


def test_the_batch_decode_stage_draws_what_the_worker_path_draws(tmp_path):
    """The code path of ``decode_device="cuda"`` run on the CPU: the same images as decoding in workers."""
    from srr.data.gpu_decode import DecodeStage, collate_encoded
    from srr.data.seeding import SeededDataset, seeded

    write_jpegs(tmp_path, splits=(("train", 3), ("val", 1)), size=(60, 45))
    dataset = load_dataset("imagefolder", data_dir=tmp_path, image_size=24, augment=True,
                           augmentation=Augmentation(crop="rrc"))
    encoded = load_dataset("imagefolder", data_dir=tmp_path, image_size=24, augment=True,
                           augmentation=Augmentation(crop="rrc"))
    encoded.encoded, stage = True, DecodeStage(encoded.transform, device="cpu")
    keys = [(i, 1000 + i) for i in range(len(dataset))]
    data, labels, seeds = collate_encoded([SeededDataset(encoded, encoded=True)[k] for k in keys])
    images = stage(data, seeds)
    assert images.shape == (6, 3, 24, 24) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    for (i, seed), image in zip(keys, images):
        with seeded(seed):
            assert torch.equal(image, dataset[i][0])


@pytest.mark.cuda
def test_gpu_decode_gives_batches_of_the_asked_shape_on_the_gpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    write_jpegs(tmp_path, splits=(("train", 5), ("val", 2)), size=(120, 90))
    config = TrainConfig(dataset="imagenet", data_dir=str(tmp_path), image_size=64, decode_device="cuda",
                         measure_samples=4, randaugment="2,9")
    data = load_run_data(config)
    batches = TrainBatches(data.train, batch_size=4, seed=0, num_workers=2)
    images, labels = next(batches.epoch(0))
    assert images.shape == (4, 3, 64, 64) and images.is_cuda and labels.shape == (4,)
    images, labels = next(eval_batches(data.test, batch_size=3, num_workers=0))
    assert images.shape == (3, 3, 64, 64) and images.is_cuda
    assert data.probe.shape == (4, 3, 64, 64)


def test_file_data_streams_through_workers_with_pinned_memory_and_prefetch(tmp_path):
    write_jpegs(tmp_path)
    data = load_run_data(TrainConfig(dataset="imagefolder", data_dir=str(tmp_path), measure_samples=0))
    batches = TrainBatches(data.train, batch_size=4, seed=0, num_workers=2, pin_memory=True, prefetch_factor=6)
    loader = batches.loader
    assert (loader.num_workers, loader.pin_memory, loader.prefetch_factor, loader.persistent_workers) == (2, True, 6,
                                                                                                          True)
    assert not hasattr(data.train.dataset, "tensors")  # file names only: nothing decoded ahead of time


# --------------------------------------------------------------------------------- seeds and resume


def _stream(dataset, *, rank=0, world_size=1, workers=2, epochs=(0,), start=0, batches=None):
    batches = batches or TrainBatches(dataset, batch_size=2, seed=3, rank=rank, world_size=world_size,
                                      num_workers=workers)
    return [torch.cat([x for x, _ in batches.epoch(e, start=start)]) for e in epochs]


def test_two_ranks_draw_different_augmentations_of_the_same_image(tmp_path):
    write_jpegs(tmp_path, splits=(("train", 1), ("val", 1)), classes=("a",), size=(60, 45))
    one = load_dataset("imagefolder", data_dir=tmp_path, image_size=24, augment=True)  # one image: every rank has it
    rank0 = _stream(one, rank=0, world_size=2)[0]
    rank1 = _stream(one, rank=1, world_size=2)[0]
    assert rank0.shape == rank1.shape == (1, 3, 24, 24) and not torch.equal(rank0, rank1)


def test_worker_streams_do_not_depend_on_workers_or_on_earlier_epochs(tmp_path):
    """Persistent workers used to keep their first epoch's seeds: a resumed run's epoch 1 differed."""
    write_jpegs(tmp_path, splits=(("train", 4), ("val", 1)), size=(60, 45))
    data = Subset(load_dataset("imagefolder", data_dir=tmp_path, image_size=24, augment=True,
                               augmentation=Augmentation(crop="rrc", randaugment="2,9")), range(8))
    continued = _stream(data, epochs=(0, 1))[1]  # epoch 1 after epoch 0, same persistent workers
    fresh = _stream(data, epochs=(1,))[0]  # a resumed run starts at epoch 1
    in_process = _stream(data, workers=0, epochs=(1,))[0]
    assert torch.equal(continued, fresh) and torch.equal(fresh, in_process)
    mid = _stream(data, epochs=(1,), start=2)[0]  # mid-epoch: from batch 2 (of 2 images) on
    assert torch.equal(mid, fresh[4:])


def _resume_config(root, out, **extra):
    return TrainConfig(dataset="imagefolder", data_dir=str(root), image_size=16, model="crate_nano", epochs=2,
                       batch_size=8, measure_samples=0, srr_weight=0.0, num_workers=2, threads=1, lr=1e-3,
                       train_crop="rrc", randaugment="2,9", mixup=0.5, dropout=0.1, log_every=1, out=str(out),
                       **extra)


class _Stopped(Exception):
    pass


class _StopAfter(Callback):
    """Ends the run at optimiser step ``step`` (after the epoch-end checkpoint before it), as a crash would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, scalars):
        if scalars["step"] == self.step:
            raise _Stopped


def test_an_epoch_boundary_resume_with_workers_is_bit_identical(tmp_path):
    write_jpegs(tmp_path / "data", splits=(("train", 16), ("val", 2)), size=(40, 30))
    whole = train(_resume_config(tmp_path / "data", tmp_path / "whole"))
    steps_per_epoch = whole.global_step // 2
    with pytest.raises(_Stopped):
        train(_resume_config(tmp_path / "data", tmp_path / "cut"), callbacks=[_StopAfter(steps_per_epoch + 1)])
    assert torch.load(tmp_path / "cut" / "checkpoints" / "latest.pt", weights_only=True)["extra"]["progress"][
        "global_step"] == steps_per_epoch  # the run stopped past an epoch end and resumes from it
    train(TrainConfig.load(tmp_path / "cut" / "config.json").replace(resume=True))
    final = torch.load(tmp_path / "cut" / "checkpoints" / "latest.pt", weights_only=True)["state_dict"]
    reference = torch.load(tmp_path / "whole" / "checkpoints" / "latest.pt", weights_only=True)["state_dict"]
    for name, value in reference.items():
        assert torch.equal(final[name], value), name


# ----------------------------------------------------------------------------------------- benchmark


def test_the_loader_benchmark_times_both_pipelines_and_reports_the_ratio(tmp_path):
    from srr.bench import bench_loader
    from srr.cli.bench import _loader

    result = bench_loader.main(["--quick", "--out", str(tmp_path / "loader.json")])
    rates = result["images_per_s_per_worker"]
    assert rates["srr"] > 0 and rates["torchvision"] > 0
    assert result["ratio"] == pytest.approx(rates["srr"] / rates["torchvision"])
    assert 60 < result["mean_jpeg_KiB"] < 200  # photographs' weight at 500 x 375, not flat colour
    headline = _loader(result)[0]
    assert headline.value == result["ratio"] and headline.target.startswith(">= 1")
    filed = json.loads((tmp_path / "loader.json").read_text())
    assert filed["command"].startswith("python -m srr.bench.bench_loader") and filed["result"] == result
