"""In-memory image datasets: the fast path for small data trained with large CPU batches.

:class:`TensorImageDataset` keeps a whole split as two tensors; :func:`as_tensors` hands them
back without copying, and :func:`random_shift` augments a whole batch at once.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .info import DatasetInfo


def random_shift(
    images: torch.Tensor,
    max_shift: int = 1,
    *,
    fill: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Translate each image by its own random offset in ``[-max_shift, max_shift]`` pixels.

    ``images`` is ``(N, C, H, W)``; uncovered pixels take the value ``fill`` (the background).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return images
    n, _, h, w = images.shape
    s = max_shift
    padded = torch.nn.functional.pad(images, (s, s, s, s), value=fill)  # (N, C, H+2s, W+2s)
    dy, dx = torch.randint(0, 2 * s + 1, (2, n, 1), generator=generator, device="cpu").to(images.device)
    rows = dy + torch.arange(h, device=images.device)  # (N, H)
    cols = dx + torch.arange(w, device=images.device)  # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    shifted = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return shifted.permute(0, 3, 1, 2).contiguous()


def random_flip(images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of ``(N, C, H, W)`` left-right with probability ½."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class TensorImageDataset(TensorDataset):
    """A split held as ``images`` ``(N, C, H, W)`` float and ``labels`` ``(N,)`` long tensors.

    With ``augment=True`` each item is shifted by up to ``max_shift`` pixels (:func:`random_shift`,
    a random crop of the image padded with ``fill``) and, with ``flip``, mirrored with
    probability ½; ``policy`` (a callable on a batch, e.g. :class:`srr.data.augment.TensorPolicy`) comes
    after them. ``.tensors`` always holds the unaugmented data.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        info: DatasetInfo,
        classes: list[str],
        augment: bool = False,
        fill: float = 0.0,
        max_shift: int = 1,
        flip: bool = False,
        policy=None,
    ) -> None:
        if images.ndim != 4 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"images must be (N, C, H, W) and labels (N,), "
                f"got {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        super().__init__(images, labels)
        self.info, self.classes = info, classes
        self.augment, self.fill, self.max_shift, self.flip = augment, fill, max_shift, flip
        self.policy = policy

    def with_policy(self, policy, *, max_shift: int | None = None) -> "TensorImageDataset":
        """The same tensors (not copied) with ``policy`` after the shift and flip (``max_shift`` replaces the
        shift: 0 where the policy crops)."""
        shift = self.max_shift if max_shift is None else max_shift
        return TensorImageDataset(*self.tensors, info=self.info, classes=self.classes, augment=self.augment,
                                  fill=self.fill, max_shift=shift, flip=self.flip, policy=policy)

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        """This dataset's training augmentation applied to a batch ``(B, C, H, W)`` of its images."""
        if not self.augment:
            return images
        images = random_shift(images, self.max_shift, fill=self.fill)
        images = random_flip(images) if self.flip else images
        return self.policy(images) if self.policy is not None else images

    @property
    def targets(self) -> torch.Tensor:
        """The labels, under torchvision's name for them."""
        return self.tensors[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = super().__getitem__(index)
        return self.augment_batch(image[None])[0], label


def as_tensors(dataset: Dataset, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole dataset as ``(images (N, C, H, W), labels (N,))``.

    In-memory datasets return their tensors as they are (no copy, no augmentation); any other
    dataset is read once, in order, through its own transform.
    """
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors
        return images, labels
    batches = list(DataLoader(dataset, batch_size=batch_size, shuffle=False))
    if not batches:
        raise ValueError("dataset must not be empty")
    return torch.cat([x for x, _ in batches]), torch.cat([torch.as_tensor(y) for _, y in batches])
