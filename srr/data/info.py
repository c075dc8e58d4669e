"""What every dataset in `srr.data` shares: its metadata, the missing-files error, the data root.

A loaded dataset carries ``.info`` (a :class:`DatasetInfo`) and ``.classes`` (the class names),
so a model can be sized from the data without knowing which dataset it is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Shape and normalisation of a dataset's images.

    ``mean``/``std`` are the per-channel constants the loader subtracts and divides by, so the
    images it returns are roughly zero-mean, unit-variance; the raw value is ``x * std + mean``.
    """

    name: str
    num_classes: int
    image_size: int  # images are square: (in_chans, image_size, image_size)
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(
                f"mean and std must have one value per channel (in_chans={self.in_chans}), "
                f"got mean={self.mean}, std={self.std}"
            )


class DatasetNotFoundError(FileNotFoundError, ValueError):
    """A dataset's files are not where the loader looked. Catch as either base class."""


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` as a path; ``None`` means ``$SRR_DATA_DIR``, else ``./data``."""
    if data_dir is None:
        return Path(os.environ.get("SRR_DATA_DIR", "data"))
    return Path(data_dir)


def check_split(split: str) -> bool:
    """True for the train split, False for test; anything else is a ValueError."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split == "train"


def check_image_size(image_size: int | None) -> None:
    """``image_size`` must be ``None`` (the dataset's own) or a positive int."""
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ValueError(f"image_size must be None or a positive int, got {image_size!r}")


def not_found(name: str, path: Path, missing: str = "") -> DatasetNotFoundError:
    """The error for a downloadable dataset whose files are missing under ``path``."""
    detail = f" ({missing} missing)" if missing else ""
    return DatasetNotFoundError(
        f"dataset {name!r} not found at {path}{detail}; pass --download "
        f"(download=True) to fetch it, or point --data-dir (data_dir) at the folder that holds it"
    )
