"""Accuracy and cross-entropy of a classifier on a dataset (no label smoothing, no augmentation)."""
from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .data import eval_batches


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on ``device`` when ``enabled`` (no gradient scaler needed for bf16)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, *, device: torch.device | str = "cpu", batch_size: int = 256,
    amp: bool = False, num_workers: int | None = None,
) -> dict:
    """``{"loss", "accuracy", "n", "images_per_s"}`` of ``model`` on every item of ``dataset``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    start = time.perf_counter()
    try:
        for images, labels in eval_batches(dataset, batch_size=batch_size, num_workers=num_workers):
            images, labels = images.to(device), torch.as_tensor(labels).to(device)
            with autocast(device, amp):
                logits = model(images)  # (B, classes)
            loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
            n += labels.numel()
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("dataset must hold at least one image to evaluate on, got an empty dataset")
    elapsed = max(time.perf_counter() - start, 1e-9)
    return {"loss": loss_sum / n, "accuracy": correct / n, "n": n, "images_per_s": n / elapsed}
