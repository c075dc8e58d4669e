"""Datasets for `srr`: embedded ``digits``, synthetic ``subspaces``, CIFAR, MNIST, ImageFolder, ImageNet
(ILSVRC-2012, streamed from disk) and generated ``fake`` images; text for language models
(``load_text_dataset``: ``shakespeare-char``, ``text``, ``textfile``; srr/data/text.py).

``load_dataset(name, split=...)`` returns a ``torch.utils.data.Dataset`` of
``(image (C, H, W), label)`` carrying ``.info`` (:class:`DatasetInfo`) and ``.classes``;
``make_loader`` gives it a reproducible, resumable order. Training augmentation beyond each data set's
own crop and flip (:class:`Augmentation`: RandomResizedCrop, RandAugment, TrivialAugment, random erasing;
:class:`BatchMix`: mixup, cutmix) comes from torchvision and timm (srr/data/augment.py); per-sample seeds
(srr/data/seeding.py) make the augmentation a function of the seed, the epoch and the sample's place.
Depends only on torch, torchvision, timm and scikit-learn (imported lazily where they can be).
"""
from .augment import Augmentation, BatchMix
from .info import DatasetInfo, DatasetNotFoundError
from .registry import dataset_info, list_datasets, load_dataset, register_dataset, streams_files
from .sampler import EpochSampler, SeededEpochSampler, make_loader
from .subspaces import make_subspaces
from .tensors import TensorImageDataset, as_tensors, random_flip, random_shift
from .text import TEXT_DATASETS, TextCorpus, Vocabulary, is_text_dataset, load_text_dataset, random_blocks

__all__ = [
    "Augmentation",
    "BatchMix",
    "DatasetInfo",
    "DatasetNotFoundError",
    "TEXT_DATASETS",
    "TextCorpus",
    "Vocabulary",
    "is_text_dataset",
    "load_text_dataset",
    "random_blocks",
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
