"""``imagefolder`` (your own images, one folder per class) and ``imagenet`` (ILSVRC-2012), streamed from disk.

Layouts::

    imagefolder: data_dir/train/<class>/<image>   and  data_dir/test/<class>/...  (or val/<class>/...)
    imagenet:    data_dir/train/<wnid>/<image>.JPEG and data_dir/val/<wnid>/...   (val/ is the test split)

Classes are the sorted folder names of ``train/``; the test folder must have the same ones. Nothing is
held in memory but the list of file names: each item is read and decoded when asked for (in the
``DataLoader``'s worker processes during training), with torchvision's libjpeg-turbo decoder
(``torchvision.io.decode_image``; PIL for formats it does not read), and transformed as a uint8 tensor
(:func:`srr.data.augment.image_pipeline`): RandomResizedCrop for training and a resize to S/0.875 with a
centre crop for evaluation from 64 pixels up, CIFAR's pad-and-crop below (``imagefolder``'s default size
is 32, ``imagenet``'s 224). Images are normalised with the ImageNet constants.

``decode_device="cuda"`` makes items the files' bytes instead; :class:`srr.data.gpu_decode.DecodeStage`
decodes a whole batch on the GPU (``torchvision.io.decode_jpeg(device="cuda")``) and applies the same
transforms there.
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import Augmentation, image_pipeline
from .info import DatasetInfo, DatasetNotFoundError, check_image_size, check_split, resolve_data_dir

DEFAULT_SIZE = {"imagefolder": 32, "imagenet": 224}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DECODE_DEVICES = ("cpu", "cuda")
LAYOUT = {
    "imagefolder": "DATA_DIR/train/<class>/<image> and DATA_DIR/test/<class>/<image> (or val/)",
    "imagenet": "DATA_DIR/train/<wnid>/<image>.JPEG and DATA_DIR/val/<wnid>/<image>.JPEG (ILSVRC-2012)",
}
TEST_FOLDERS = {"imagefolder": ("test", "val"), "imagenet": ("val",)}
# torchvision 0.29 points image I/O users to TorchCodec, which is not a dependency; its decoders still work
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def _split_dir(root: Path, split: str, name: str = "imagefolder") -> Path:
    candidates = [root / "train"] if split == "train" else [root / f for f in TEST_FOLDERS[name]]
    for folder in candidates:
        if folder.is_dir():
            return folder
    looked = " or ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(
        f"{name} {split} split not found: no folder {looked}; expected the layout {LAYOUT[name]}, "
        f"with --data-dir (data_dir) pointing at DATA_DIR"
    )


def _classes(folder: Path, name: str = "imagefolder") -> list[str]:
    from torchvision.datasets.folder import find_classes

    try:
        return find_classes(folder)[0]
    except FileNotFoundError as error:  # a folder with no class subfolders
        raise DatasetNotFoundError(f"{error}; expected the layout {LAYOUT[name]}") from error


def _info(name: str, data_dir, image_size: int | None) -> DatasetInfo:
    check_image_size(image_size)
    classes = _classes(_split_dir(resolve_data_dir(data_dir), "train", name), name)
    return DatasetInfo(name, len(classes), image_size or DEFAULT_SIZE[name], 3, IMAGENET_MEAN, IMAGENET_STD)


def imagefolder_info(*, data_dir=None, image_size: int | None = None, **_) -> DatasetInfo:
    """Metadata of the image folder at ``data_dir``: its classes are the folders of ``train/``."""
    return _info("imagefolder", data_dir, image_size)


def imagenet_info(*, data_dir=None, image_size: int | None = None, **_) -> DatasetInfo:
    """Metadata of ILSVRC-2012 at ``data_dir`` (1000 class folders in ``train/``; 224 px by default)."""
    return _info("imagenet", data_dir, image_size)


def decode(data: torch.Tensor) -> torch.Tensor:
    """A file's bytes ``(n,)`` uint8 → its RGB image ``(3, H, W)`` uint8 (torchvision's decoders, else PIL)."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:  # a format torchvision does not decode (BMP, TIFF, ...)
        import io

        import numpy as np
        from PIL import Image

        with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


class ImageFiles(Dataset):
    """``(image (3, S, S) float, label)`` read from ``samples`` (``[(path, label)]``) one file at a time.

    The file list is kept as numpy arrays (paths as bytes), not a list of Python objects: the loader's forked
    workers read it without touching reference counts, so ImageNet's 1.28 M names are not copied into each.
    ``decode_device="cuda"``: items are ``(the file's bytes (n,) uint8, label)``, for :attr:`decode_stage`.
    """

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], info: DatasetInfo, transform, *,
                 eval_transform=None, decode_device: str = "cpu") -> None:
        self.paths = np.array([os.fsencode(path) for path, _ in samples], dtype=bytes)
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.classes, self.info, self.transform = classes, info, transform
        self.eval_transform = eval_transform or transform
        self.encoded = decode_device != "cpu"
        self.decode_stage = decode_stage(transform, decode_device)  # None unless encoded

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``[(path, label)]``, as torchvision's ``ImageFolder`` names them."""
        return [(os.fsdecode(path), int(label)) for path, label in zip(self.paths, self.labels)]

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def plain(self) -> "ImageFiles":
        """The same files under the evaluation transform (no second directory scan)."""
        view = copy.copy(self)
        view.transform = self.eval_transform
        view.decode_stage = decode_stage(self.eval_transform, "cuda") if self.encoded else None
        return view

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from torchvision.io import read_file

        path, label = os.fsdecode(self.paths[index]), int(self.labels[index])
        data = read_file(path)  # (n,) uint8
        if self.encoded:
            return data, label
        return self.transform(decode(data)), label


def _load(name: str, split: str, *, data_dir, download, augment, image_size, augmentation, decode_device):
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    is_train = check_split(split)
    if download:
        raise ValueError(f"download must be False for {name}: it reads local files only")
    check_decode_device(decode_device)
    root = resolve_data_dir(data_dir)
    info = _info(name, root, image_size)
    folder = _split_dir(root, split, name)
    train_classes = _classes(root / "train", name)
    if not is_train and _classes(folder, name) != train_classes:
        raise ValueError(
            f"the class folders of {folder} must match those of {root / 'train'}: "
            f"{train_classes}, got {_classes(folder, name)}"
        )
    index = {c: i for i, c in enumerate(train_classes)}
    samples = make_dataset(str(folder), index, extensions=IMG_EXTENSIONS, allow_empty=True)
    augmentation = augmentation or Augmentation()
    return ImageFiles(samples, train_classes, info, image_pipeline(info, augmentation, train=augment and is_train),
                      eval_transform=image_pipeline(info, augmentation, train=False), decode_device=decode_device)


def decode_stage(transform, decode_device: str):
    """The batch decode of ``decode_device`` (:class:`~srr.data.gpu_decode.DecodeStage`); None for ``"cpu"``."""
    if decode_device == "cpu":
        return None
    from .gpu_decode import DecodeStage

    return DecodeStage(transform, device=decode_device)


def check_decode_device(decode_device: str) -> None:
    """``decode_device`` must be ``"cpu"`` or ``"cuda"``, and ``"cuda"`` needs a CUDA device."""
    if decode_device not in DECODE_DEVICES:
        raise ValueError(f"decode_device must be one of {DECODE_DEVICES}, got {decode_device!r}")
    if decode_device == "cuda" and not torch.cuda.is_available():
        raise ValueError("decode_device must be 'cpu' on a machine without CUDA (torch.cuda.is_available() is "
                         "False): 'cuda' decodes JPEGs on the GPU (torchvision.io.decode_jpeg); got 'cuda'")


def load_imagefolder(split: str, *, data_dir=None, download=False, augment=False, image_size=None, seed=0,
                     augmentation: Augmentation | None = None, decode_device: str = "cpu") -> ImageFiles:
    """The ``split`` of the image folder at ``data_dir``. ``augment`` (train split only) applies
    ``augmentation`` (default: the crop and flip of :class:`Augmentation`'s ``"auto"``); ``seed`` is unused."""
    return _load("imagefolder", split, data_dir=data_dir, download=download, augment=augment,
                 image_size=image_size, augmentation=augmentation, decode_device=decode_device)


def load_imagenet(split: str, *, data_dir=None, download=False, augment=False, image_size=None, seed=0,
                  augmentation: Augmentation | None = None, decode_device: str = "cpu") -> ImageFiles:
    """The ``split`` of ILSVRC-2012 at ``data_dir`` (``test`` is ``val/``); as :func:`load_imagefolder`."""
    return _load("imagenet", split, data_dir=data_dir, download=download, augment=augment,
                 image_size=image_size, augmentation=augmentation, decode_device=decode_device)
