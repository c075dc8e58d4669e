"""``fake``: random images of any shape, generated per index, for throughput runs with no data on disk.

Like the public CRATE code's ``--dummy`` (torchvision ``FakeData``): ImageNet's 1000 classes and
1,281,167 training images at 224 px by default; the test split has 1,000 (a throughput data set: its
final evaluation should not dominate a timing run). Item ``i`` of a split is the same every time: a
uint8 image ``(3, S, S)`` and a label drawn from a generator seeded by ``(seed, split, i)``. It goes
through the same uint8 pipeline as ``imagenet`` (:func:`srr.data.augment.image_pipeline`), so the
augmentation costs what it costs on real images. With ``decode_device="cuda"`` each item is encoded
as a JPEG in the worker, so the GPU decode path has bytes to decode.
"""
from __future__ import annotations

import copy

import torch
from torch.utils.data import Dataset

from .augment import Augmentation, image_pipeline
from .imagefolder import IMAGENET_MEAN, IMAGENET_STD, check_decode_device, decode_stage
from .info import DatasetInfo, check_image_size, check_split
from .seeding import epoch_base

DEFAULT_SIZE = 224
NUM_CLASSES = 1000
SIZES = {"train": 1_281_167, "test": 1_000}


def fake_info(*, data_dir=None, image_size: int | None = None, num_classes: int = NUM_CLASSES, **_) -> DatasetInfo:
    """Metadata of ``fake``: ``num_classes`` classes of 3-channel ``image_size`` (224) images."""
    check_image_size(image_size)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return DatasetInfo("fake", num_classes, image_size or DEFAULT_SIZE, 3, IMAGENET_MEAN, IMAGENET_STD)


class FakeImages(Dataset):
    """``n`` generated ``(image, label)`` pairs; ``encoded``: the image as JPEG bytes (for GPU decode)."""

    def __init__(self, n: int, info: DatasetInfo, transform, *, base_seed: int, eval_transform=None,
                 decode_device: str = "cpu") -> None:
        self.n, self.info, self.transform, self.base_seed = n, info, transform, base_seed
        self.eval_transform = eval_transform or transform
        self.classes = [f"class_{k}" for k in range(info.num_classes)]
        self.encoded = decode_device != "cpu"
        self.decode_stage = decode_stage(transform, decode_device)

    def plain(self) -> "FakeImages":
        """The same images under the evaluation transform."""
        view = copy.copy(self)
        view.transform = self.eval_transform
        view.decode_stage = decode_stage(self.eval_transform, "cuda") if self.encoded else None
        return view

    def __len__(self) -> int:
        return self.n

    def raw(self, index: int) -> tuple[torch.Tensor, int]:
        """Item ``index`` before any transform: ``(uint8 (3, S, S), label)``."""
        if not 0 <= index < self.n:
            raise IndexError(f"index must be in [0, {self.n}), got {index}")
        generator = torch.Generator().manual_seed(self.base_seed + index)
        size = self.info.image_size
        label = int(torch.randint(self.info.num_classes, (), generator=generator))
        image = torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8)
        return image, label

    def __getitem__(self, index: int):
        image, label = self.raw(index)
        if self.encoded:
            from torchvision.io import encode_jpeg

            return encode_jpeg(image, quality=90), label
        return self.transform(image), label


def load_fake(split: str, *, data_dir=None, download=False, augment=False, image_size=None, seed=0,
              num_classes: int = NUM_CLASSES, num_train: int = SIZES["train"], num_test: int = SIZES["test"],
              augmentation: Augmentation | None = None, decode_device: str = "cpu") -> FakeImages:
    """The ``split`` of ``fake`` (``num_train`` / ``num_test`` images, fixed by ``seed``); nothing is read."""
    is_train = check_split(split)
    check_decode_device(decode_device)
    n = num_train if is_train else num_test
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_{split} must be a positive int, got {n!r}")
    info = fake_info(image_size=image_size, num_classes=num_classes)
    augmentation = augmentation or Augmentation()
    return FakeImages(n, info, image_pipeline(info, augmentation, train=augment and is_train),
                      base_seed=epoch_base(seed, 0, 1 if is_train else 2),
                      eval_transform=image_pipeline(info, augmentation, train=False), decode_device=decode_device)
