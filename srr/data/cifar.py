"""``cifar10`` and ``cifar100``: decoded once into a cached uint8 tensor, then held in memory.

Two layouts are read under ``data_dir``:

- the class-folder layout ``train/<class>/*.jpg|png``, ``test/<class>/...`` (e.g. the JPEG
  copy at ``../shared/data/cifar10``); the folder names must be the dataset's class names;
- the official python batches ``cifar-10-batches-py/`` / ``cifar-100-python/`` (what
  ``--download`` fetches through torchvision, which checks the archive's md5).

Labels follow the dataset's official label order in both. Decoding 60,000 small images takes
seconds; the result is stored as ``(N, 3, 32, 32)`` uint8 under ``cache_dir`` (default
``$SRR_CACHE_DIR``, else ``~/.cache/srr``), keyed by a fingerprint of the source files' names,
sizes and modification times, so a changed file rebuilds it and a second run starts at once.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .info import DatasetInfo, DatasetNotFoundError, check_image_size, check_split, not_found, resolve_data_dir
from .tensors import TensorImageDataset

NATIVE_SIZE = 32
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CACHE_VERSION = 1  # bump when the cached payload's meaning changes

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


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


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir`` as a path; ``None`` means ``$SRR_CACHE_DIR``, else ``~/.cache/srr``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("SRR_CACHE_DIR"):
        return Path(os.environ["SRR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "srr"


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _fingerprint(entries: list[tuple[str, int, int]]) -> str:
    digest = hashlib.sha1(f"v{CACHE_VERSION}".encode())
    for name, size, mtime in entries:
        digest.update(f"{name}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()[:20]


def _stat(path: Path, relative_to: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.relative_to(relative_to)), st.st_size, st.st_mtime_ns


class _FolderSource:
    """``root/<split>/<class>/<image>``; class folders must be exactly the dataset's classes."""

    def __init__(self, root: Path, split: str, classes: list[str]) -> None:
        self.root, self.split, self.classes = root, split, classes
        folder = root / split
        found = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if set(found) != set(classes):
            raise ValueError(
                f"the class folders of {folder} must be the {len(classes)} class names of the dataset "
                f"({', '.join(classes[:10])}{', …' if len(classes) > 10 else ''}), got {found}"
            )
        self.files: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            with os.scandir(folder / name) as it:
                names = sorted(e.name for e in it if e.name.lower().endswith(IMAGE_SUFFIXES))
            self.files += [(folder / name / n, label) for n in names]
        if not self.files:
            raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}/<class>/")

    def fingerprint(self) -> str:
        return _fingerprint([_stat(path, self.root) for path, _ in self.files])

    def decode(self, advance=lambda: None) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        images = np.empty((len(self.files), NATIVE_SIZE, NATIVE_SIZE, 3), dtype=np.uint8)
        for i, (path, _) in enumerate(self.files):
            advance()
            with Image.open(path) as image:
                if image.size != (NATIVE_SIZE, NATIVE_SIZE):
                    raise ValueError(f"CIFAR images must be {NATIVE_SIZE}x{NATIVE_SIZE}, got {image.size[0]}x"
                                     f"{image.size[1]} in {path}")
                images[i] = np.asarray(image.convert("RGB"))
        labels = torch.tensor([label for _, label in self.files], dtype=torch.long)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels  # (N, 3, 32, 32)


class _PickleSource:
    """The official python batches: rows of 3072 bytes, channel-major then row-major."""

    def __init__(self, folder: Path, fmt: CifarFormat, split: str) -> None:
        self.folder, self.fmt = folder, fmt
        self.names = fmt.train_files if split == "train" else fmt.test_files

    def fingerprint(self) -> str:
        return _fingerprint([_stat(self.folder / n, self.folder) for n in (*self.names, self.fmt.meta_file)])

    def decode(self, advance=lambda: None) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [_unpickle(self.folder / name) for name in self.names]
        data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE)
        labels = [int(y) for b in batches for y in b[self.fmt.label_key]]
        return torch.from_numpy(np.ascontiguousarray(data)), torch.tensor(labels, dtype=torch.long)

    def classes(self) -> list[str]:
        return list(_unpickle(self.folder / self.fmt.meta_file)[self.fmt.names_key])


def _official_classes(name: str, folder_source_root: Path | None) -> list[str]:
    if name == "cifar10":
        return list(CIFAR10_CLASSES)
    # CIFAR-100's fine label names are in alphabetical order: the sorted class folders.
    return sorted(p.name for p in (folder_source_root / "train").iterdir() if p.is_dir())


def _source(name: str, root: Path, split: str, download: bool, is_train: bool):
    """The files a split is read from: class folders if ``root/train`` exists, else the pickles."""
    fmt = FORMATS[name]
    if (root / "train").is_dir() and (root / split).is_dir():
        classes = _official_classes(name, root)
        return _FolderSource(root, split, classes), classes
    folder = root if (root / fmt.meta_file).is_file() else root / fmt.folder
    missing = [f for f in (*fmt.train_files, *fmt.test_files, fmt.meta_file) if not (folder / f).is_file()]
    if missing and download:
        import torchvision.datasets

        getattr(torchvision.datasets, fmt.torchvision_class)(root, train=is_train, download=True)
        folder = root / fmt.folder
    elif missing:
        error = not_found(name, folder, ", ".join(missing) if folder.is_dir() else "")
        raise type(error)(f"{error}; --data-dir may hold either layout: class folders {root}/train/<class>/ and "
                          f"{root}/test/<class>/ (JPEG/PNG), or the python batches {root}/{fmt.folder}/ "
                          f"({fmt.meta_file}, {', '.join((*fmt.train_files[:1], *fmt.test_files))}, ...)")
    source = _PickleSource(folder, fmt, split)
    return source, source.classes()


def decoded_split(name: str, split: str, *, data_dir=None, download=False, cache_dir=None):
    """``(images (N, 3, 32, 32) uint8, labels (N,), classes)`` of a CIFAR split, through the cache.

    The cache file is written atomically (a temporary file, then a rename), so an interrupted
    decode never leaves a truncated cache behind; a cache that cannot be read is rebuilt.
    """
    if name not in FORMATS:
        raise ValueError(f"name must be one of {sorted(FORMATS)}, got {name!r}")
    is_train = check_split(split)
    root = resolve_data_dir(data_dir)
    source, classes = _source(name, root, split, download, is_train)
    cache = resolve_cache_dir(cache_dir) / f"{name}-{split}-{source.fingerprint()}.pt"
    if cache.is_file():
        try:
            payload = torch.load(cache, weights_only=True)
            return payload["images"], payload["labels"], list(payload["classes"])
        except Exception:  # noqa: BLE001 — a damaged cache is rebuilt, never trusted
            pass
    images, labels = _decode_with_progress(source, f"decoding {name} {split} once, into the cache")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        torch.save({"images": images, "labels": labels, "classes": classes}, tmp)
        os.replace(tmp, cache)
    except OSError:  # a read-only cache folder costs a decode per run, not the run
        pass
    return images, labels, classes


DECODE_PROGRESS_MIN = 1000  # images: below this a decode is quick enough to need no bar


def _decode_with_progress(source, description: str):
    """``source.decode()``, with a progress bar on stderr for a folder of many images (the first decode of
    CIFAR's 60,000 JPEGs takes tens of seconds; later runs read the cache)."""
    total = len(getattr(source, "files", ()))
    if total < DECODE_PROGRESS_MIN:
        return source.decode()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        return source.decode(advance=lambda: progress.advance(task))


def cifar_info(name: str, *, data_dir=None, image_size: int | None = None, cache_dir=None) -> DatasetInfo:
    """Metadata of ``cifar10`` / ``cifar100`` (the standard normalisation constants)."""
    check_image_size(image_size)
    fmt = FORMATS[name]
    return DatasetInfo(name, fmt.num_classes, image_size or NATIVE_SIZE, 3, fmt.mean, fmt.std)


def normalise(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 ``(N, 3, 32, 32)`` -> float ``(N, 3, S, S)``, standardised with ``info``'s constants."""
    x = images.float().div_(255)
    if info.image_size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(info.image_size,) * 2, mode="bilinear", antialias=True)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def load_cifar(
    name: str, split: str, *, data_dir=None, download=False, augment=False, image_size=None, seed=0,
    cache_dir=None,
) -> TensorImageDataset:
    """The ``split`` of ``cifar10`` / ``cifar100`` as an in-memory dataset.

    ``augment`` (train split only) is the standard random crop with ``S // 8`` pixels of padding
    (4 at 32 px; the padding takes the mean colour) and a horizontal flip, applied to whole
    batches. ``seed`` is unused.
    """
    is_train = check_split(split)
    info = cifar_info(name, image_size=image_size)
    images, labels, classes = decoded_split(name, split, data_dir=data_dir, download=download, cache_dir=cache_dir)
    return TensorImageDataset(
        normalise(images, info), labels, info=info, classes=classes, augment=augment and is_train,
        max_shift=info.image_size // 8, flip=True,
    )
