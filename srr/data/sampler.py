"""Reproducible, resumable data order: one seeded permutation per ``(seed, epoch)``.

The order of epoch ``e`` depends only on ``(seed, e)``, never on how many epochs ran before
in this process, so a run resumed from a checkpoint sees the same batches as an uninterrupted
one. Under DDP every rank draws the same permutation and takes its own strided share.

Repeated augmentation (``repeats=K``, Hoffer et al. 2020 and DeiT's ``RASampler``): each index of the
permutation appears K times in a row before the ranks take their strided shares, so with K <= world size
the K copies of an image go to K different ranks (and are augmented differently there); an epoch keeps
its length (``ceil(n / world_size)`` per rank), so it covers about n / K distinct images.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .seeding import epoch_base


def _non_negative_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator seeded from the pair ``(seed, epoch)``; distinct pairs give unrelated streams."""
    mixed = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed))


class EpochSampler(Sampler[int]):
    """Indices of a dataset of size ``n``, permuted per epoch and split across ``world_size`` ranks.

    Like ``DistributedSampler``: without ``drop_last`` the permutation is padded by repeating
    its start, so each rank gets ``ceil(n / world_size)`` indices; with it, the tail is dropped
    and each rank gets ``n // world_size``. Rank ``r`` takes positions ``r, r + world_size, ...``.
    Call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        repeats: int = 1,
    ) -> None:
        for name, value in (("n", n), ("seed", seed), ("rank", rank)):
            _non_negative_int(name, value)
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if rank >= world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive int (copies of each image per epoch), got {repeats!r}")
        self.rank, self.world_size, self.drop_last, self.repeats = rank, world_size, drop_last, repeats
        self.num_samples = n // world_size if drop_last else math.ceil(n / world_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, *, start: int = 0) -> None:
        """Use epoch ``epoch``'s order, skipping this rank's first ``start`` indices (mid-epoch resume)."""
        _non_negative_int("epoch", epoch)
        _non_negative_int("start", start)
        if start > self.num_samples:
            raise ValueError(f"start must be <= {self.num_samples} (samples per rank), got {start}")
        self.epoch, self.start = epoch, start

    def permutation(self) -> torch.Tensor:
        """The full order of the current epoch, shared by all ranks: ``(n,)`` long."""
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch))

    def assignment(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices, positions)`` of this rank from ``start`` on: the dataset indices, and their places in the
        epoch's global order (the same whatever the world size), both ``(num_samples - start,)`` long."""
        order = self.permutation()
        if self.repeats > 1:
            order = order.repeat_interleave(self.repeats)
        total = self.num_samples * self.world_size
        if total > len(order):  # pad by wrapping around (repeatedly, if n < world_size)
            order = order.repeat(math.ceil(total / max(len(order), 1)))
        positions = torch.arange(self.rank, total, self.world_size)[self.start :]
        return order[positions], positions

    def __iter__(self) -> Iterator[int]:
        return iter(self.assignment()[0].tolist())

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededEpochSampler(EpochSampler):
    """:class:`EpochSampler` yielding ``(index, seed)``: each sample's own seed, ``epoch_base(seed, epoch)`` plus
    its global position (:mod:`srr.data.seeding`), for a :class:`~srr.data.seeding.SeededDataset`."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, positions = self.assignment()
        base = epoch_base(self.seed, self.epoch)
        return zip(indices.tolist(), (base + positions).tolist())


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` whose order is an :class:`EpochSampler` (``loader.sampler``).

    Call ``loader.sampler.set_epoch(epoch)`` before each epoch. With ``distributed=True``,
    ``rank`` and ``world_size`` default to those of the initialised ``torch.distributed``
    process group. Random augmentation in workers is seeded from ``seed`` as well.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    _non_negative_int("num_workers", num_workers)
    if distributed:
        if rank is None or world_size is None:
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                raise ValueError(
                    "distributed=True needs rank and world_size, or an initialised "
                    "torch.distributed process group; got neither"
                )
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
    else:
        rank, world_size = 0, 1
    sampler = EpochSampler(
        len(dataset), seed=seed, shuffle=shuffle, rank=rank, world_size=world_size,
        drop_last=drop_last and distributed,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )
