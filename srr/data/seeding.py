"""Per-sample random streams: each training sample's augmentation is drawn from its own seed.

A ``DataLoader``'s workers seed themselves once, when they start; with ``persistent_workers`` they keep
that stream for the whole run, so a per-epoch reseed of the loader has no effect after the first epoch,
and the draws of a sample depend on which worker took it and what that worker drew before. Here the
sampler (in the main process) hands each index its own seed, ``epoch_base(seed, epoch) + position``,
with ``position`` the sample's place in the epoch's global order (rank ``r`` of ``W`` takes positions
``r, r + W, ...``): two ranks draw different augmentations, and a sample's draws are the same whichever
worker decodes it, however many workers there are, and whether or not the run was resumed.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import Dataset

_MASK = (1 << 63) - 1
_BASE_MASK = (1 << 62) - 1  # a base plus any position stays below 2**63 (an int64)


def epoch_base(seed: int, epoch: int, stream: int = 0) -> int:
    """A 62-bit base seed for ``(seed, epoch, stream)``; distinct triples give unrelated bases."""
    return int(np.random.SeedSequence([seed, epoch, stream, 0x5EED]).generate_state(1, dtype=np.uint64)[0]) & _BASE_MASK


@contextlib.contextmanager
def seeded(seed: int):
    """Run the body with torch's CPU generator and Python's ``random`` seeded from ``seed`` (the streams
    torchvision's and timm's transforms draw from), and give both their previous state back afterwards."""
    generator = torch.default_generator
    torch_state, python_state = generator.get_state(), random.getstate()
    generator.manual_seed(seed & _MASK)
    random.seed(seed)
    try:
        yield
    finally:
        generator.set_state(torch_state)
        random.setstate(python_state)


class SeededDataset(Dataset):
    """``dataset`` indexed by ``(index, seed)``: the item is built under :func:`seeded` ``(seed)``.

    An encoded item (a file's bytes, decoded later by a batch stage) is returned as ``((bytes, seed), label)``,
    so the stage can draw its transform from the same seed.
    """

    def __init__(self, dataset: Dataset, *, encoded: bool = False) -> None:
        self.dataset, self.encoded = dataset, encoded

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        if self.encoded:
            data, label = self.dataset[index]
            return (data, seed), label
        with seeded(seed):
            return self.dataset[index]
