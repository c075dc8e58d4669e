"""``mnist`` and ``fashion-mnist`` through torchvision, from the raw idx files.

Layout under ``data_dir``: ``MNIST/raw/`` (or ``FashionMNIST/raw/``) holding
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``: what ``--download`` fetches. torchvision only checks that these
files exist, so any file in the idx format loads.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from .info import DatasetInfo, check_image_size, check_split, not_found, resolve_data_dir
from .transforms import image_transform

NATIVE_SIZE = 28


@dataclass(frozen=True)
class MnistFormat:
    torchvision_class: str  # also the folder name under data_dir
    mean: tuple[float]
    std: tuple[float]


FORMATS = {
    "mnist": MnistFormat("MNIST", mean=(0.1307,), std=(0.3081,)),
    "fashion-mnist": MnistFormat("FashionMNIST", mean=(0.2860,), std=(0.3530,)),
}


def mnist_info(name: str, *, data_dir=None, image_size: int | None = None) -> DatasetInfo:
    """Metadata of ``mnist`` / ``fashion-mnist`` (the standard normalisation constants)."""
    check_image_size(image_size)
    fmt = FORMATS[name]
    return DatasetInfo(name, 10, image_size or NATIVE_SIZE, 1, fmt.mean, fmt.std)


def load_mnist(
    name: str, split: str, *, data_dir=None, download=False, augment=False, image_size=None, seed=0
) -> Dataset:
    """The ``split`` of ``mnist`` / ``fashion-mnist`` from ``data_dir``, downloading if asked.

    ``augment`` (train split only) is a random crop with 3 pixels of padding; digits and
    clothes are not flipped. ``seed`` is unused.
    """
    import torchvision.datasets

    is_train = check_split(split)
    fmt, root = FORMATS[name], resolve_data_dir(data_dir)
    info = mnist_info(name, image_size=image_size)
    transform = image_transform(
        info, augment=augment and is_train, flip=False, resize=info.image_size != NATIVE_SIZE
    )
    try:
        dataset = getattr(torchvision.datasets, fmt.torchvision_class)(
            root, train=is_train, transform=transform, download=download
        )
    except RuntimeError as error:
        if "not found" not in str(error).lower():
            raise  # e.g. a failed download: torchvision's own message is the useful one
        raise not_found(name, root / fmt.torchvision_class / "raw") from error
    dataset.info = info
    return dataset
