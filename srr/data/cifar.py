"""``cifar10`` and ``cifar100``, read from the official python-pickle batches.

Layout under ``data_dir``: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
and ``cifar-100-python/{train, test, meta}``: what ``--download`` fetches (through torchvision,
which checks the archive's md5). Reading is done here rather than by
``torchvision.datasets.CIFAR10``, whose per-file md5 check rejects anything not byte-identical
to the official release; the format is the same.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from .info import DatasetInfo, check_image_size, check_split, not_found, resolve_data_dir
from .transforms import image_transform

NATIVE_SIZE = 32


@dataclass(frozen=True)
class CifarFormat:
    """Where one CIFAR variant keeps its files and under which pickle keys."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    torchvision_class: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


FORMATS = {
    "cifar10": CifarFormat(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
        "batches.meta", "labels", "label_names", "CIFAR10", 10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": CifarFormat(
        "cifar-100-python", ("train",), ("test",),
        "meta", "fine_labels", "fine_label_names", "CIFAR100", 100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    ),
}


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


class CifarPickle(Dataset):
    """One split of a CIFAR variant: ``data`` ``(N, 32, 32, 3)`` uint8, ``targets``, ``classes``.

    Items are ``(transform(PIL image), label)``, like torchvision's CIFAR datasets.
    """

    def __init__(self, folder: Path, fmt: CifarFormat, *, train: bool, transform=None) -> None:
        batches = [_unpickle(folder / name) for name in (fmt.train_files if train else fmt.test_files)]
        data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE)
        self.data = data.transpose(0, 2, 3, 1)  # (N, 3, 32, 32) -> HWC for PIL
        self.targets = [int(y) for b in batches for y in b[fmt.label_key]]
        self.classes = list(_unpickle(folder / fmt.meta_file)[fmt.names_key])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        image = Image.fromarray(self.data[index])
        return (self.transform(image) if self.transform else image), self.targets[index]


def cifar_info(name: str, *, data_dir=None, image_size: int | None = None) -> DatasetInfo:
    """Metadata of ``cifar10`` / ``cifar100`` (the standard normalisation constants)."""
    check_image_size(image_size)
    fmt = FORMATS[name]
    return DatasetInfo(name, fmt.num_classes, image_size or NATIVE_SIZE, 3, fmt.mean, fmt.std)


def load_cifar(
    name: str, split: str, *, data_dir=None, download=False, augment=False, image_size=None, seed=0
) -> CifarPickle:
    """The ``split`` of ``cifar10`` / ``cifar100`` from ``data_dir``, downloading if asked.

    ``augment`` (train split only) is random crop with 4 pixels of padding and horizontal flip.
    ``seed`` is unused.
    """
    is_train = check_split(split)
    fmt, root = FORMATS[name], resolve_data_dir(data_dir)
    folder = root / fmt.folder
    missing = [f for f in (*fmt.train_files, *fmt.test_files, fmt.meta_file) if not (folder / f).is_file()]
    if missing and download:
        import torchvision.datasets

        getattr(torchvision.datasets, fmt.torchvision_class)(root, train=is_train, download=True)
    elif missing:
        raise not_found(name, folder, ", ".join(missing) if folder.is_dir() else "")
    info = cifar_info(name, image_size=image_size)
    transform = image_transform(
        info, augment=augment and is_train, flip=True, resize=info.image_size != NATIVE_SIZE
    )
    dataset = CifarPickle(folder, fmt, train=is_train, transform=transform)
    dataset.info = info
    return dataset
