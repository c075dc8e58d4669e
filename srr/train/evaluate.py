"""Accuracy and cross-entropy of a classifier on a dataset (no label smoothing, no augmentation).

Under ``torch.distributed`` (``world_size > 1``) every rank scores its own shard, the items
``rank, rank + world_size, ...`` of the dataset — a partition, with no padding, so no item is
counted twice and the total is exactly ``len(dataset)`` whatever the world size — and the loss sum,
the correct count and the item count are all-reduced: every rank returns the same numbers, equal to
the single process's up to the order of a float64 sum.
"""
from __future__ import annotations

import contextlib
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from .data import eval_batches


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on ``device`` when ``enabled`` (no gradient scaler needed for bf16)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def shard(dataset: Dataset, *, rank: int, world_size: int) -> Dataset:
    """Items ``rank::world_size`` of ``dataset`` (a ``Subset`` of a ``Subset`` is flattened, so in-memory
    data stays sliceable)."""
    if world_size == 1:
        return dataset
    if isinstance(dataset, Subset):
        return Subset(dataset.dataset, list(dataset.indices)[rank::world_size])
    return Subset(dataset, range(rank, len(dataset), world_size))


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, *, device: torch.device | str = "cpu", batch_size: int = 256,
    amp: bool = False, num_workers: int | None = None, rank: int = 0, world_size: int = 1,
) -> dict:
    """``{"loss", "accuracy", "n", "images_per_s"}`` of ``model`` on every item of ``dataset``; with
    ``world_size > 1`` (an initialised process group) this rank scores its shard and the sums are
    all-reduced (a collective: every rank must call it)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # Σ loss, Σ correct, n: summed on device, no sync
    start = time.perf_counter()
    try:
        part = shard(dataset, rank=rank, world_size=world_size)
        for images, labels in eval_batches(part, batch_size=batch_size, num_workers=num_workers):
            images, labels = images.to(device), torch.as_tensor(labels).to(device)
            with autocast(device, amp):
                logits = model(images)  # (B, classes)
            sums[0] += F.cross_entropy(logits.float(), labels, reduction="sum").double()
            sums[1] += (logits.argmax(-1) == labels).sum()
            sums[2] += labels.numel()
    finally:
        model.train(was_training)
    if world_size > 1:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    loss_sum, correct, n = sums.tolist()
    n = int(n)
    if n == 0:
        raise ValueError("dataset must hold at least one image to evaluate on, got an empty dataset")
    elapsed = max(time.perf_counter() - start, 1e-9)
    return {"loss": loss_sum / n, "accuracy": correct / n, "n": n, "images_per_s": n / elapsed}
