"""``digits``: scikit-learn's bundled handwritten digits (1797 real 8x8 images, 10 classes).

Embedded (no download) and small, so it is held in memory as tensors. Pixels (16 grey levels)
are divided by 16, then standardised with the training split's pixel mean and std. The
train/test split is stratified 80/20 under a fixed seed, so it is the same in every run,
whatever the training seed.
"""
from __future__ import annotations

import functools

import torch

from .info import DatasetInfo, check_image_size, check_split
from .tensors import TensorImageDataset

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: test accuracy stays comparable across training seeds
NATIVE_SIZE = 8
CLASSES = [str(d) for d in range(10)]


@functools.lru_cache(maxsize=1)
def _splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Raw ``(images (N, 1, 8, 8) in [0, 1], labels (N,))`` per split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    train, test = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=TEST_FRACTION,
        stratify=bunch.target,
        random_state=SPLIT_SEED,
    )
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


def digits_info(*, data_dir=None, image_size: int | None = None) -> DatasetInfo:
    """Metadata of ``digits`` (``data_dir`` is accepted and unused: the data is embedded)."""
    check_image_size(image_size)
    train_images = _splits()["train"][0]
    return DatasetInfo(
        name="digits",
        num_classes=len(CLASSES),
        image_size=image_size or NATIVE_SIZE,
        in_chans=1,
        mean=(train_images.mean().item(),),
        std=(train_images.std(correction=0).item(),),
    )


def load_digits(
    split: str, *, data_dir=None, download=False, augment=False, image_size=None, seed=0
) -> TensorImageDataset:
    """The ``split`` of ``digits`` as an in-memory dataset, resized to ``image_size`` if given.

    ``augment`` shifts each training image by up to one pixel. ``data_dir``, ``download``
    and ``seed`` are accepted for a uniform signature and unused.
    """
    check_split(split)
    info = digits_info(image_size=image_size)
    images, labels = _splits()[split]
    images = (images - info.mean[0]) / info.std[0]
    if info.image_size != NATIVE_SIZE:
        images = torch.nn.functional.interpolate(
            images, size=(info.image_size, info.image_size), mode="bilinear", align_corners=False
        )
    background = (0.0 - info.mean[0]) / info.std[0]  # a blank pixel, after standardising
    return TensorImageDataset(
        images, labels, info=info, classes=list(CLASSES), augment=augment, fill=background
    )
