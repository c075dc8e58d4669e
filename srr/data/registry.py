"""The dataset registry: ``load_dataset(name, ...)``, ``dataset_info(name, ...)``, ``list_datasets()``.

Each entry pairs a loader ``load(split, *, data_dir, download, augment, image_size, seed, **kw)``
with ``info(*, data_dir, image_size, **kw)``, both taking the same dataset-specific ``kw``, so
``dataset_info(name, data_dir=d, image_size=s, **kw) == load_dataset(name, data_dir=d,
image_size=s, **kw).info``.

A streaming entry (``streams=True``: ``imagefolder``, ``imagenet``, ``fake``) reads or generates each item
when asked and builds ``augmentation`` into its per-image pipeline; it also takes ``decode_device``. An
in-memory entry gets ``augmentation``'s policy applied to its batches (:class:`~srr.data.augment.TensorPolicy`).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import Dataset

from .augment import Augmentation, TensorPolicy
from .cifar import FORMATS as CIFAR_FORMATS, cifar_info, load_cifar
from .digits import digits_info, load_digits
from .fake import fake_info, load_fake
from .imagefolder import imagefolder_info, imagenet_info, load_imagefolder, load_imagenet
from .info import DatasetInfo
from .mnist import FORMATS as MNIST_FORMATS, load_mnist, mnist_info
from .subspaces import load_subspaces, subspaces_info
from .tensors import TensorImageDataset
from .text import TEXT_DATASETS, is_text_dataset


@dataclass(frozen=True)
class DatasetEntry:
    """How to load one registered dataset and how to describe it without loading it."""

    load: Callable[..., Dataset]
    info: Callable[..., DatasetInfo]
    streams: bool = False  # items read (or generated) one at a time; load takes augmentation= and decode_device=


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(name: str, load: Callable[..., Dataset], info: Callable[..., DatasetInfo], *,
                     streams: bool = False) -> None:
    """Make ``name`` loadable; the dataset ``load`` returns must carry ``.info`` and ``.classes``."""
    if name in _REGISTRY or is_text_dataset(name):
        raise ValueError(f"dataset name must be new, got {name!r}, which is already registered")
    _REGISTRY[name] = DatasetEntry(load, info, streams)


def streams_files(name: str) -> bool:
    """Whether dataset ``name`` is read item by item (a ``DataLoader`` with workers), not held in memory."""
    return _entry(name).streams


TASKS = ("image", "language")


class _Then:
    """``first`` then ``policy`` on the one image it returns (picklable, for loader workers)."""

    def __init__(self, first, policy) -> None:
        self.first, self.policy = first, policy

    def __call__(self, image):
        return self.policy(self.first(image)[None])[0]


def list_datasets(*, task: str | None = "image") -> list[str]:
    """The registered dataset names, sorted: of images (``load_dataset``), of text for language models
    (``task="language"``: ``srr.data.load_text_dataset``), or both (``task=None``)."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} or None, got {task!r}")
    return sorted([*(_REGISTRY if task != "language" else ()), *(TEXT_DATASETS if task != "image" else ())])


def _entry(name: str) -> DatasetEntry:
    if is_text_dataset(name):
        raise ValueError(f"dataset {name!r} is a text dataset, not images: load it with "
                         f"srr.data.load_text_dataset({name!r}, data_dir=...)")
    if name not in _REGISTRY:
        raise ValueError(f"dataset must be one of {list_datasets()}, got {name!r}")
    return _REGISTRY[name]


def dataset_info(name: str, *, data_dir=None, image_size: int | None = None, **kw) -> DatasetInfo:
    """Metadata of ``name`` under the options ``load_dataset`` would get, without loading it."""
    return _entry(name).info(data_dir=data_dir, image_size=image_size, **kw)


def load_dataset(
    name: str,
    *,
    split: str = "train",
    data_dir=None,
    download: bool = False,
    augment: bool = False,
    image_size: int | None = None,
    seed: int = 0,
    augmentation: Augmentation | None = None,
    decode_device: str = "cpu",
    **kw,
) -> Dataset:
    """The ``split`` (``"train"`` or ``"test"``) of dataset ``name``; see :func:`list_datasets`.

    Items are ``(image (C, H, W) float, label)``; the dataset carries ``.info`` and
    ``.classes``. ``data_dir`` (default ``$SRR_DATA_DIR`` or ``./data``) holds file-backed
    datasets; ``download`` fetches missing ones; ``augment`` applies the dataset's standard
    training augmentation, or with ``augmentation`` (:class:`~srr.data.augment.Augmentation`) the one it
    describes; ``image_size`` resizes; ``seed`` fixes synthetic data; ``decode_device="cuda"`` (file and
    ``fake`` data) leaves JPEG decoding to a batch stage on the GPU. ``kw`` are dataset-specific
    (``subspaces``: ``num_subspaces``, ``subspace_dim``, ``noise``, ``num_train``, ``num_test``; ``fake``:
    ``num_classes``, ``num_train``, ``num_test``). Missing files raise :class:`DatasetNotFoundError`.
    """
    entry = _entry(name)
    common = dict(data_dir=data_dir, download=download, augment=augment, image_size=image_size, seed=seed)
    if entry.streams:
        return entry.load(split, **common, augmentation=augmentation, decode_device=decode_device, **kw)
    if decode_device != "cpu":
        streamed = ", ".join(n for n in list_datasets() if _REGISTRY[n].streams)
        raise ValueError(f"decode_device must be 'cpu' for {name!r}, which is held in memory: {decode_device!r} "
                         f"decodes the image files of {streamed}; got {decode_device!r}")
    dataset = entry.load(split, **common, **kw)
    if not (augment and split == "train" and augmentation is not None
            and (augmentation.has_policy or augmentation.crop == "rrc")):
        return dataset
    policy = TensorPolicy(dataset.info, augmentation)
    if isinstance(dataset, TensorImageDataset):  # applied to whole batches
        return dataset.with_policy(policy, max_shift=0 if augmentation.crop == "rrc" else None)
    if callable(getattr(dataset, "transform", None)):  # a per-item torchvision dataset (MNIST): after its transform
        dataset.transform = _Then(dataset.transform, policy)
        return dataset
    raise ValueError(f"augmentation must be None for {name!r}, whose items srr cannot augment further, got "
                     f"{augmentation}")


register_dataset("digits", load_digits, digits_info)
register_dataset("subspaces", load_subspaces, subspaces_info)
register_dataset("imagefolder", load_imagefolder, imagefolder_info, streams=True)
register_dataset("imagenet", load_imagenet, imagenet_info, streams=True)
register_dataset("fake", load_fake, fake_info, streams=True)
for _name in CIFAR_FORMATS:
    register_dataset(_name, functools.partial(load_cifar, _name), functools.partial(cifar_info, _name))
for _name in MNIST_FORMATS:
    register_dataset(_name, functools.partial(load_mnist, _name), functools.partial(mnist_info, _name))
