"""The data of a run: train / val / test splits, a fixed probe set, and resumable batch streams.

The validation split is carved out of the training split under a fixed seed (the same for every
training seed), so test data is never used to pick the best checkpoint. Batches follow
``srr.data``'s :class:`EpochSampler`, whose order depends only on ``(seed, epoch)``: a run
resumed at any step sees the batches the uninterrupted run would have seen. In-memory datasets
(``digits``, ``subspaces``) skip the ``DataLoader`` and are sliced as whole batches, with no
per-sample Python work.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from srr.data import DatasetInfo, EpochSampler, TensorImageDataset, as_tensors, load_dataset, make_loader

from .config import TrainConfig

VAL_SPLIT_SEED = 0  # fixed: the validation images are the same whatever the training seed


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


def default_workers(dataset: Dataset) -> int:
    return 0 if _tensor_base(dataset) is not None else min(4, os.cpu_count() or 1)


def load_run_data(config: TrainConfig) -> RunData:
    """Load the splits ``config`` asks for (raises the data layer's errors unchanged)."""
    common = dict(data_dir=config.data_dir, download=config.download, image_size=config.image_size, seed=config.seed)
    plain = load_dataset(config.dataset, split="train", augment=False, **common)
    augmented = load_dataset(config.dataset, split="train", augment=True, **common) if config.augment else plain
    test = load_dataset(config.dataset, split="test", augment=False, **common)
    n = len(plain)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED)).tolist()
    n_val = math.ceil(n * config.val_fraction) if config.val_fraction > 0 else 0
    if n - n_val < 1:
        raise ValueError(f"val_fraction={config.val_fraction} leaves no training images out of {n}")
    val_idx, train_idx = sorted(order[:n_val]), order[n_val:]
    if config.train_subset is not None:
        train_idx = train_idx[: config.train_subset]
    train_idx = sorted(train_idx)
    probe = None
    if config.measure_samples > 0:
        probe, _ = as_tensors(Subset(plain, train_idx[: config.measure_samples]))
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

    ``epoch(e, start=k)`` yields the batches of epoch ``e`` from the ``k``-th on (mid-epoch resume).
    Exact resume holds for in-memory data and ``num_workers=0``. With worker processes it is not
    guaranteed: the loader's generator is reseeded from ``(seed, epoch)`` (not the rank) each epoch, but
    persistent workers keep the seeds they were started with, so only the first epoch's draws follow it.
    """

    def __init__(
        self, dataset: Dataset, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
        num_workers: int | None = None, pin_memory: bool = False,
    ) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.tensor = _tensor_base(dataset)
        self.num_workers = default_workers(dataset) if num_workers is None else num_workers
        if self.tensor is not None and num_workers is None:
            self.num_workers = 0
        self.sampler = EpochSampler(len(dataset), seed=seed, shuffle=True, rank=rank, world_size=world_size)
        self.loader: DataLoader | None = None
        if self.tensor is None or self.num_workers > 0:
            self.loader = make_loader(
                dataset, batch_size=batch_size, shuffle=True, seed=seed, num_workers=self.num_workers,
                distributed=world_size > 1, rank=rank, world_size=world_size,
            )
            if pin_memory:
                self.loader.pin_memory = True
            self.sampler = self.loader.sampler

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return math.ceil(self.sampler.num_samples / self.batch_size)

    def epoch(self, epoch: int, *, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch, start=min(start * self.batch_size, self.sampler.num_samples))
        if self.loader is not None:
            mixed = np.random.SeedSequence([self.seed, epoch, 1]).generate_state(1, dtype=np.uint64)[0]
            self.loader.generator.manual_seed(int(mixed))  # worker seeds: a function of (seed, epoch)
            yield from self.loader
            return
        base, index_map = self.tensor
        images, labels = base.tensors
        order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
        if index_map is not None:
            order = index_map[order]
        for chunk in order.split(self.batch_size):
            yield base.augment_batch(images[chunk]), labels[chunk]  # (B, C, H, W)


def eval_batches(dataset: Dataset, *, batch_size: int, num_workers: int | None = None) -> Iterator:
    """``dataset`` in order, in batches (in-memory datasets are sliced, not collated)."""
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
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
