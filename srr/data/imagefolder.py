"""``imagefolder``: your own images, one folder per class.

Layout::

    data_dir/
        train/<class name>/<image>.png   (any format PIL reads)
        test/<class name>/...            (or val/<class name>/...)

Classes are the sorted folder names of ``train/``; ``test/`` must have the same ones. Images
are converted to RGB, resized to ``image_size`` x ``image_size`` (default 32) and normalised
with the ImageNet constants.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .info import DatasetInfo, DatasetNotFoundError, check_image_size, check_split, resolve_data_dir
from .transforms import image_transform

DEFAULT_SIZE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUT = "DATA_DIR/train/<class>/<image> and DATA_DIR/test/<class>/<image> (or val/)"


def _split_dir(root: Path, split: str) -> Path:
    candidates = [root / "train"] if split == "train" else [root / "test", root / "val"]
    for folder in candidates:
        if folder.is_dir():
            return folder
    looked = " or ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(
        f"imagefolder {split} split not found: no folder {looked}; expected the layout {LAYOUT}, "
        f"with --data-dir (data_dir) pointing at DATA_DIR"
    )


def _classes(folder: Path) -> list[str]:
    from torchvision.datasets.folder import find_classes

    try:
        return find_classes(folder)[0]
    except FileNotFoundError as error:  # a folder with no class subfolders
        raise DatasetNotFoundError(f"{error}; expected the layout {LAYOUT}") from error


def imagefolder_info(*, data_dir=None, image_size: int | None = None) -> DatasetInfo:
    """Metadata of the image folder at ``data_dir``: its classes are the folders of ``train/``."""
    check_image_size(image_size)
    classes = _classes(_split_dir(resolve_data_dir(data_dir), "train"))
    size = image_size or DEFAULT_SIZE
    return DatasetInfo("imagefolder", len(classes), size, 3, IMAGENET_MEAN, IMAGENET_STD)


def load_imagefolder(
    split: str, *, data_dir=None, download=False, augment=False, image_size=None, seed=0
) -> Dataset:
    """The ``split`` of the image folder at ``data_dir`` (torchvision ``ImageFolder``).

    ``augment`` (train split only) is a random crop with ``image_size // 8`` pixels of padding
    and a horizontal flip. ``download`` must be False (there is nothing to fetch); ``seed`` is
    unused.
    """
    from torchvision.datasets import ImageFolder

    is_train = check_split(split)
    if download:
        raise ValueError("download must be False for imagefolder: it reads local files only")
    root = resolve_data_dir(data_dir)
    info = imagefolder_info(data_dir=root, image_size=image_size)
    folder = _split_dir(root, split)
    train_classes = _classes(root / "train")
    if not is_train and _classes(folder) != train_classes:
        raise ValueError(
            f"the class folders of {folder} must match those of {root / 'train'}: "
            f"{train_classes}, got {_classes(folder)}"
        )
    transform = image_transform(info, augment=augment and is_train, flip=True, resize=True)
    dataset = ImageFolder(folder, transform=transform)
    dataset.info = info
    return dataset
