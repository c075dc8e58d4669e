"""JPEG decoding of a whole batch on the GPU: the loader's workers only read files, the GPU decodes.

``torchvision.io.decode_jpeg(list_of_bytes, device="cuda")`` decodes the batch with nvJPEG in one call;
each image then goes through the dataset's own uint8 pipeline (crop, flip, policy, normalisation) on
the device, seeded with the seed its sample drew in the sampler, so the GPU path draws the same
augmentation parameters as the CPU path would. ``device="cpu"`` runs the same code on the CPU (the
tests use it; it is not faster than decoding in the workers).
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from .seeding import seeded


def collate_encoded(batch: Sequence) -> tuple[list[torch.Tensor], torch.Tensor, list[int] | None]:
    """``[(bytes, label)]`` or ``[((bytes, seed), label)]`` → ``([bytes], labels (B,), [seed] or None)``."""
    first = batch[0][0]
    if isinstance(first, tuple):
        data = [item[0][0] for item in batch]
        seeds = [item[0][1] for item in batch]
    else:
        data, seeds = [item[0] for item in batch], None
    labels = torch.as_tensor([item[1] for item in batch], dtype=torch.long)
    return data, labels, seeds


class DecodeStage:
    """``(list of file bytes, seeds or None)`` → images ``(B, C, S, S)`` float on ``device``."""

    def __init__(self, transform, *, device: str | torch.device = "cuda") -> None:
        self.transform, self.device = transform, torch.device(device)

    def __call__(self, data: list[torch.Tensor], seeds: Sequence[int] | None = None) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        images = decode_jpeg(list(data), mode=ImageReadMode.RGB, device=self.device)  # [(3, H_i, W_i) uint8]
        out = []
        for i, image in enumerate(images):
            with seeded(seeds[i]) if seeds is not None else contextlib.nullcontext():
                out.append(self.transform(image).to(self.device))  # timm's string RandAugment goes through PIL
        return torch.stack(out)  # (B, 3, S, S)
