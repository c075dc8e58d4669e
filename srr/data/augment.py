"""Training augmentation: what a run asks for (:class:`Augmentation`, :class:`BatchMix`) and the
torchvision ``transforms.v2`` / ``timm.data`` pieces that do it (none of the image operations is written here).

Per image, in the loader's workers (:func:`policy_steps`): RandAugment (``"N,M"``: torchvision's
``RandAugment(N, M)``; ``"rand-m9-mstd0.5-inc1"``: timm's string, as DeiT, XCiT and ToST give it) or
TrivialAugment, on the uint8 image after the crop and flip; random erasing (timm's ``RandomErasing``, per-pixel
noise, as DeiT) on the normalised image. Per batch (:class:`BatchMix`): mixup and cutmix (torchvision's
``MixUp`` / ``CutMix``; with both, each batch takes one of the two with probability ½, as timm's ``Mixup``),
which turn the labels into soft targets ``(B, num_classes)``.

The crop (``crop``): ``"rrc"`` is ImageNet's RandomResizedCrop(S, scale=(0.08, 1)) for training and a resize to
S/0.875 then a centre crop of S for evaluation; ``"pad"`` is CIFAR's random crop with S/8 pixels of padding,
evaluated at S; ``"auto"`` takes ``rrc`` from :data:`RRC_FROM` pixels up and ``pad`` below.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch

from srr._checks import check_choice, check_number

CROPS = ("auto", "rrc", "pad")
RRC_SCALE = (0.08, 1.0)  # RandomResizedCrop's area range (Szegedy et al. 2015; the ImageNet convention)
EVAL_CROP_RATIO = 0.875  # evaluation: resize to S / 0.875 (256 for 224), then the centre S x S
RRC_FROM = 64  # crop="auto": RandomResizedCrop from this image size up, CIFAR's pad-and-crop below
_TIMM_RA = re.compile(r"rand(-[a-z]+[0-9.]*)*")


def parse_randaugment(text: str) -> tuple[int, int] | str:
    """``(N, M)`` from ``"N,M"`` (torchvision's RandAugment: N ops of magnitude M of 30), or a timm config
    string such as ``"rand-m9-mstd0.5-inc1"`` returned as it is."""
    if isinstance(text, str) and _TIMM_RA.fullmatch(text.strip()):
        return text.strip()
    try:
        n, m = (int(part) for part in text.split(","))
    except (AttributeError, ValueError):
        n = m = -1
    if n < 1 or not 0 <= m <= 30:
        raise ValueError(f"randaugment must be 'N,M' (N >= 1 ops, magnitude 0 <= M <= 30), e.g. '2,9', or timm's "
                         f"string, e.g. 'rand-m9-mstd0.5-inc1', got {text!r}")
    return n, m


@dataclass(frozen=True)
class Augmentation:
    """The per-image training augmentation of a run (the batch-level mixing is :class:`BatchMix`)."""

    crop: str = "auto"  # "rrc", "pad" or "auto" (see the module docstring)
    randaugment: str | None = None  # "N,M" or timm's "rand-m9-mstd0.5-inc1"; None: off
    trivialaugment: bool = False  # torchvision's TrivialAugmentWide
    random_erasing: float = 0.0  # probability of erasing one random rectangle (timm RandomErasing, pixel mode)

    def __post_init__(self) -> None:
        check_choice(self.crop, "train_crop", CROPS)
        if self.randaugment is not None:
            parse_randaugment(self.randaugment)
            if self.trivialaugment:
                raise ValueError("randaugment and trivialaugment are two policies for the same step; give one, "
                                 f"got randaugment={self.randaugment!r} and trivialaugment=True")
        check_number(self.random_erasing, "random_erasing", low=0, high=1)

    def resolved_crop(self, image_size: int) -> str:
        """``"rrc"`` or ``"pad"`` at ``image_size``."""
        if self.crop != "auto":
            return self.crop
        return "rrc" if image_size >= RRC_FROM else "pad"

    @property
    def has_policy(self) -> bool:
        """Whether anything beyond the crop and flip is asked for."""
        return self.randaugment is not None or self.trivialaugment or self.random_erasing > 0


def crop_steps(size: int, crop: str, *, train: bool) -> list:
    """The resize/crop transforms of a uint8 image (any size) to ``(C, size, size)``: training or evaluation."""
    from torchvision.transforms import v2

    if crop == "rrc":
        if train:
            return [v2.RandomResizedCrop(size, scale=RRC_SCALE, antialias=True), v2.RandomHorizontalFlip()]
        return [v2.Resize(round(size / EVAL_CROP_RATIO), antialias=True), v2.CenterCrop(size)]
    steps = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]  # the shorter side to S: no squashing
    if train:
        steps += [v2.RandomCrop(size, padding=size // 8), v2.RandomHorizontalFlip()]
    return steps


def policy_steps(augmentation: Augmentation, *, image_size: int, mean) -> list:
    """RandAugment / TrivialAugment on a uint8 image tensor ``(C, H, W)`` (timm's string policy goes through PIL)."""
    from torchvision.transforms import v2

    fill = [round(255 * m) for m in mean]
    if augmentation.trivialaugment:
        return [v2.TrivialAugmentWide(fill=fill)]
    if augmentation.randaugment is None:
        return []
    parsed = parse_randaugment(augmentation.randaugment)
    if isinstance(parsed, tuple):
        return [v2.RandAugment(num_ops=parsed[0], magnitude=parsed[1], fill=fill)]
    from timm.data.auto_augment import rand_augment_transform

    hparams = {"translate_const": int(image_size * 0.45), "img_mean": tuple(fill)}  # timm create_transform's
    return [v2.ToPILImage(), rand_augment_transform(parsed, hparams), v2.PILToTensor()]


def erasing_step(augmentation: Augmentation):
    """timm's RandomErasing on a normalised ``(C, H, W)`` image, or None when off."""
    if augmentation.random_erasing <= 0:
        return None
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(probability=augmentation.random_erasing, mode="pixel", max_count=1, device="cpu")


def image_pipeline(info, augmentation: Augmentation, *, train: bool):
    """uint8 image ``(C, H, W)`` of any size → normalised float ``(C, S, S)``, ``S = info.image_size``:
    the crop (and flip) of ``augmentation.crop``, then, when ``train``, its policy and random erasing."""
    from torchvision.transforms import v2

    size = info.image_size
    steps = crop_steps(size, augmentation.resolved_crop(size), train=train)
    if train:
        steps += policy_steps(augmentation, image_size=size, mean=info.mean)
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]
    erasing = erasing_step(augmentation) if train else None
    if erasing is not None:
        steps.append(erasing)
    return v2.Compose(steps)


class TensorPolicy:
    """An :class:`Augmentation`'s policy and random erasing applied to a batch of normalised float images
    ``(B, C, H, W)`` held in memory (CIFAR, MNIST, digits): each image is taken back to uint8 for the policy
    (RandAugment's operations are defined on 8-bit images) and normalised again. The crop is the dataset's own
    batch crop, except ``crop="rrc"``, which is applied here."""

    def __init__(self, info, augmentation: Augmentation) -> None:
        from torchvision.transforms import v2

        size = info.image_size
        self.mean = torch.tensor(info.mean).view(-1, 1, 1)
        self.std = torch.tensor(info.std).view(-1, 1, 1)
        crop = crop_steps(size, "rrc", train=True) if augmentation.crop == "rrc" else []
        policy = policy_steps(augmentation, image_size=size, mean=info.mean)
        self.uint8 = v2.Compose(crop + policy) if crop or policy else None
        self.erasing = erasing_step(augmentation)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for image in images:  # (C, H, W)
            if self.uint8 is not None:
                raw = (image * self.std + self.mean).mul(255).round_().clamp_(0, 255).to(torch.uint8)
                image = (self.uint8(raw).float() / 255 - self.mean) / self.std
            if self.erasing is not None:
                image = self.erasing(image.clone())
            out.append(image)
        return torch.stack(out)  # (B, C, H, W)


@dataclass(frozen=True)
class BatchMix:
    """Mixup (``mixup`` = α of its Beta(α, α)) and cutmix (``cutmix`` = α) of a batch; 0 turns one off."""

    num_classes: int
    mixup: float = 0.0
    cutmix: float = 0.0

    def __post_init__(self) -> None:
        check_number(self.mixup, "mixup", low=0)
        check_number(self.cutmix, "cutmix", low=0)

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    @functools.cached_property
    def transform(self):
        """torchvision's ``MixUp``, ``CutMix``, or a ``RandomChoice`` of the two (built once)."""
        from torchvision.transforms import v2

        mixes = [v2.MixUp(alpha=self.mixup, num_classes=self.num_classes)] if self.mixup > 0 else []
        mixes += [v2.CutMix(alpha=self.cutmix, num_classes=self.num_classes)] if self.cutmix > 0 else []
        return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (B, C, H, W), labels (B,))`` → ``(mixed images, soft targets (B, num_classes) float)``."""
        return self.transform(images, labels)
