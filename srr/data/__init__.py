"""Datasets for `srr`: embedded ``digits``, synthetic ``subspaces``, CIFAR, MNIST, ImageFolder.

``load_dataset(name, split=...)`` returns a ``torch.utils.data.Dataset`` of
``(image (C, H, W), label)`` carrying ``.info`` (:class:`DatasetInfo`) and ``.classes``;
``make_loader`` gives it a reproducible, resumable order. Depends only on torch, torchvision
and scikit-learn (the last two imported lazily).
"""
from .augment import Augmentation, BatchMix
from .info import DatasetInfo, DatasetNotFoundError
from .registry import dataset_info, list_datasets, load_dataset, register_dataset, streams_files
from .sampler import EpochSampler, SeededEpochSampler, make_loader
from .subspaces import make_subspaces
from .tensors import TensorImageDataset, as_tensors, random_flip, random_shift

__all__ = [
    "Augmentation",
    "BatchMix",
    "DatasetInfo",
    "DatasetNotFoundError",
    "EpochSampler",
    "TensorImageDataset",
    "as_tensors",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "make_loader",
    "make_subspaces",
    "random_flip",
    "random_shift",
    "register_dataset",
    "SeededEpochSampler",
    "streams_files",
]
