"""The PIL-to-tensor pipeline of MNIST (per item); ImageNet-style pipelines are in srr/data/augment.py."""
from __future__ import annotations

import torch

from .info import DatasetInfo


def image_transform(info: DatasetInfo, *, augment: bool, flip: bool, resize: bool):
    """PIL image -> normalised ``(C, S, S)`` float tensor, ``S = info.image_size``.

    ``resize`` scales to ``S x S`` first. ``augment`` adds the standard random crop with
    ``S // 8`` pixels of padding (4 for CIFAR) and, if ``flip``, a random horizontal flip.
    """
    from torchvision.transforms import v2

    size = info.image_size
    steps = [v2.ToImage()]
    if resize:
        steps.append(v2.Resize((size, size), antialias=True))
    if augment:
        steps.append(v2.RandomCrop(size, padding=size // 8))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]
    return v2.Compose(steps)
