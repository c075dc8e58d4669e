"""The data of a run: train / val / test splits, a fixed probe set, and resumable batch streams.

The validation split is carved out of the training split under a fixed seed (the same for every
training seed), so test data is never used to pick the best checkpoint; data sets with their own
validation images (``imagenet``, whose ``val/`` is the test split, and ``fake``) carve none unless
``val_fraction`` asks. Batches follow ``srr.data``'s :class:`EpochSampler`, whose order depends only on
``(seed, epoch)``, and each sample's augmentation and each batch's mixing draw from seeds of their own
(:mod:`srr.data.seeding`): a run resumed at any step sees the batches the uninterrupted run would have
seen. In-memory datasets (``digits``, ``subspaces``, CIFAR, MNIST) skip the ``DataLoader`` and are sliced
as whole batches, with no per-sample Python work; file-backed ones (``imagefolder``, ``imagenet``) and
``fake`` stream through ``DataLoader`` workers with pinned memory and ``prefetch_factor``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from srr.data import BatchMix, DatasetInfo, EpochSampler, SeededEpochSampler, TensorImageDataset, load_dataset
from srr.data.gpu_decode import collate_encoded
from srr.data.seeding import SeededDataset, epoch_base, seeded

from .config import TrainConfig

VAL_SPLIT_SEED = 0  # fixed: the validation images are the same whatever the training seed
OWN_VALIDATION = ("imagenet", "fake")  # val_fraction None means 0 for these (their val/ is the test split)
MIX_STREAM, WORKER_STREAM = 1, 2  # epoch_base streams: a batch's mixup/cutmix, a rank's worker seeds


@dataclass
class RunData:
    """Everything a run reads. ``probe`` is ``measure_samples`` un-augmented training images
    ``(n, C, H, W)`` on which μ_SRR is measured each epoch."""

    info: DatasetInfo
    classes: list
    train: Dataset  # with augmentation when asked
    val: Dataset | None
    test: Dataset
    probe: torch.Tensor | None


def _tensor_base(dataset: Dataset) -> tuple[TensorImageDataset, torch.Tensor | None] | None:
    """``(in-memory dataset, index map or None)`` when ``dataset`` can be sliced as tensors."""
    if isinstance(dataset, TensorImageDataset):
        return dataset, None
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, TensorImageDataset):
        return dataset.dataset, torch.as_tensor(dataset.indices, dtype=torch.long)
    return None


def _decode_stage(dataset: Dataset):
    """The batch-level decode of ``dataset`` (``decode_device="cuda"``), looked up through ``Subset``s; or None."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "decode_stage", None)


def default_workers(dataset: Dataset) -> int:
    return 0 if _tensor_base(dataset) is not None else min(4, os.cpu_count() or 1)


def val_fraction(config: TrainConfig) -> float:
    """``config.val_fraction``, or its default for the data set: 0 for :data:`OWN_VALIDATION`, else 0.1."""
    if config.val_fraction is not None:
        return config.val_fraction
    return 0.0 if config.dataset in OWN_VALIDATION else 0.1


def batch_mix(config: TrainConfig, num_classes: int) -> BatchMix | None:
    """The run's mixup / cutmix, or None when both are off."""
    mix = BatchMix(num_classes, mixup=config.mixup, cutmix=config.cutmix)
    return mix if mix.active else None


def _as_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(eval_batches(dataset, batch_size=256, num_workers=0))
    return torch.cat([x.cpu() for x, _ in batches]), torch.cat([torch.as_tensor(y) for _, y in batches])


def load_run_data(config: TrainConfig) -> RunData:
    """Load the splits ``config`` asks for (raises the data layer's errors unchanged)."""
    common = dict(data_dir=config.data_dir, download=config.download, image_size=config.image_size, seed=config.seed,
                  augmentation=config.augmentation(), decode_device=config.decode_device)
    augmented = load_dataset(config.dataset, split="train", augment=config.augment, **common)
    # a streamed data set lists its files once: the un-augmented view shares the list
    plain = augmented.plain() if hasattr(augmented, "plain") else (
        load_dataset(config.dataset, split="train", augment=False, **common) if config.augment else augmented)
    test = load_dataset(config.dataset, split="test", augment=False, **common)
    n = len(plain)
    fraction = val_fraction(config)
    n_val = math.ceil(n * fraction) if fraction > 0 else 0
    if n - n_val < 1:
        raise ValueError(f"val_fraction={fraction} leaves no training images out of {n}")
    if n_val:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED)).tolist()
        val_idx, train_idx = sorted(order[:n_val]), order[n_val:]
    else:
        val_idx, train_idx = [], range(n)
    if config.train_subset is not None:
        train_idx = train_idx[: config.train_subset]
    train_idx = sorted(train_idx)
    probe = None
    if config.measure_samples > 0:
        probe, _ = _as_tensors(Subset(plain, train_idx[: config.measure_samples]))
        probe = probe.clone()
    return RunData(
        info=plain.info,
        classes=list(getattr(plain, "classes", [])),
        train=Subset(augmented, train_idx),
        val=Subset(plain, val_idx) if n_val else None,
        test=test,
        probe=probe,
    )


class TrainBatches:
    """Per-epoch batch streams of this rank's share of ``dataset``.

    ``epoch(e, start=k)`` yields the batches of epoch ``e`` from the ``k``-th on (mid-epoch resume):
    ``(images (B, C, H, W), labels (B,))``, or with ``mix`` (mixup / cutmix) soft targets ``(B, classes)``.

    What it guarantees: the stream is a function of ``(seed, epoch, rank, world_size, batch_size, repeats)``
    alone. With ``DataLoader`` workers, each sample is augmented under its own seed (``srr.data.seeding``: the
    seed, the epoch and the sample's global position, which fixes the rank), never a worker's running stream,
    so the number of workers, which worker took a sample, persistent workers and a restart change nothing;
    each batch's mixing has its own seed from ``(seed, epoch, its global position)``. Resume is therefore exact
    at epoch boundaries and mid-epoch (``start=k`` gives the uninterrupted stream's batches from ``k`` on). In
    memory without workers, the batch augmentation (shift, flip, policy) draws from torch's global generator,
    which the trainer checkpoints: exact at epoch boundaries and at the checkpoints it writes mid-epoch. Each
    rank's workers also start from their own seed, a function of ``(seed, rank, worker)`` (torch seeds worker
    ``w`` with ``base + w``), for randomness outside srr's transforms.
    """

    def __init__(
        self, dataset: Dataset, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
        num_workers: int | None = None, pin_memory: bool = False, prefetch_factor: int | None = None,
        repeats: int = 1, mix: BatchMix | None = None,
    ) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.mix = mix if mix is not None and mix.active else None
        self.tensor = _tensor_base(dataset)
        self.stage = _decode_stage(dataset)
        self.num_workers = default_workers(dataset) if num_workers is None else num_workers
        if self.tensor is not None and num_workers is None:
            self.num_workers = 0
        self.loader: DataLoader | None = None
        if self.tensor is not None and self.num_workers == 0:
            self.sampler = EpochSampler(len(dataset), seed=seed, shuffle=True, rank=rank, world_size=world_size,
                                        repeats=repeats)
            return
        self.sampler = SeededEpochSampler(len(dataset), seed=seed, shuffle=True, rank=rank, world_size=world_size,
                                          repeats=repeats)
        workers = self.num_workers > 0
        self.loader = DataLoader(
            SeededDataset(dataset, encoded=self.stage is not None), batch_size=batch_size, sampler=self.sampler,
            num_workers=self.num_workers, collate_fn=collate_encoded if self.stage is not None else None,
            pin_memory=pin_memory and self.stage is None, prefetch_factor=prefetch_factor if workers else None,
            persistent_workers=workers, worker_init_fn=_seed_numpy if workers else None,
            generator=torch.Generator().manual_seed(epoch_base(seed, rank, WORKER_STREAM)),
        )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return math.ceil(self.sampler.num_samples / self.batch_size)

    def epoch(self, epoch: int, *, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch, start=min(start * self.batch_size, self.sampler.num_samples))
        mix_base = epoch_base(self.seed, epoch, MIX_STREAM)
        for i, (images, labels) in enumerate(self._batches(), start=start):
            if self.mix is not None:
                with seeded(mix_base + i * self.world_size + self.rank):
                    images, labels = self.mix(images, torch.as_tensor(labels))
            yield images, labels

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.loader is not None and self.stage is not None:
            for data, labels, seeds in self.loader:
                yield self.stage(data, seeds), labels  # decoded on the stage's device
        elif self.loader is not None:
            yield from self.loader
        else:
            base, index_map = self.tensor
            images, labels = base.tensors
            order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
            if index_map is not None:
                order = index_map[order]
            for chunk in order.split(self.batch_size):
                yield base.augment_batch(images[chunk]), labels[chunk]  # (B, C, H, W)


def _seed_numpy(worker: int) -> None:
    """numpy's global generator in a worker, from the worker's torch seed (torch seeds only torch and random)."""
    np.random.seed(torch.initial_seed() % 2**32)


def eval_batches(dataset: Dataset, *, batch_size: int, num_workers: int | None = None) -> Iterator:
    """``dataset`` in order, in batches (in-memory datasets are sliced, not collated; encoded ones are
    decoded a batch at a time by their decode stage)."""
    tensor = _tensor_base(dataset)
    if tensor is not None:
        base, index_map = tensor
        images, labels = base.tensors
        if index_map is None:
            index_map = torch.arange(len(base))
        for chunk in index_map.split(batch_size):
            yield images[chunk], labels[chunk]
        return
    workers = default_workers(dataset) if num_workers is None else num_workers
    stage = _decode_stage(dataset)
    if stage is None:
        yield from DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
        return
    for data, labels, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                      collate_fn=collate_encoded):
        yield stage(data), labels
