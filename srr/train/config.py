"""``TrainConfig``: everything that defines a training run, as one frozen, JSON-serialisable value.

The run folder stores it as ``config.json``; ``--resume`` reads it back, so a resumed run trains
under exactly the options it started with. Defaults give the newcomer's run: ``crate_nano`` on
the bundled ``digits`` data with SRR regularisation of the last layer (HU24 §6, MATH.md §6),
about a minute on two CPU cores.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

OPTIMIZERS = ("adamw", "adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Options of one run. Sizes are per process: under ``torchrun`` the global batch is
    ``batch_size * world_size``."""

    # model
    model: str = "crate_nano"
    variant: str | None = None  # None: the registry entry's own variant
    patch_size: int | None = None  # None: the registry entry's own
    dropout: float | None = None  # None: the registry entry's own
    # data
    dataset: str = "digits"
    data_dir: str | None = None  # None: $SRR_DATA_DIR, else ./data
    download: bool = False
    augment: bool = True
    image_size: int | None = None  # None: the dataset's own
    val_fraction: float = 0.1  # held out of the training split (fixed split) for val metrics and best.pt
    train_subset: int | None = None  # train on the first n training images only (smoke runs, tests)
    num_workers: int | None = None  # None: 0 for in-memory data, else min(4, cpus)
    # optimisation
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    min_lr: float = 1e-5  # floor of the cosine schedule
    weight_decay: float = 0.05  # applied to weight matrices only
    warmup: float = 2.0  # epochs of linear warm-up (fractions allowed)
    optimizer: str = "adamw"
    momentum: float = 0.9  # sgd only
    label_smoothing: float = 0.1
    grad_clip: float | None = 1.0  # max global gradient norm; None disables clipping
    # SRR regularisation (MATH.md §6)
    srr_weight: float = 1e-3  # η_reg; 0 disables the regulariser
    srr_layers: str = "last"  # "last", "all" or comma-separated layer indices, e.g. "0,3"
    srr_eps: float = 0.1  # ε (never ε²); srr.measure's default
    srr_lam: float = 0.1  # λ of the ℓ0 term of μ_SRR (reported; carries no gradient)
    measure_samples: int = 256  # training images on which per-layer μ_SRR is measured each epoch; 0: off
    # run control
    out: str | None = None  # run folder; None: runs/<model>-<dataset>-<timestamp>
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    amp: bool = False  # bfloat16 autocast
    compile: bool = False  # torch.compile the model
    resume: bool = False
    checkpoint_every: int = 0  # also checkpoint every k optimiser steps; 0: end of each epoch only
    deterministic: bool = True  # torch.use_deterministic_algorithms (exact resume)
    threads: int | None = None  # intra-op CPU threads during the run; None: torch's default

    def __post_init__(self) -> None:
        _int(self, "epochs", minimum=1)
        _int(self, "batch_size", minimum=1)
        _int(self, "seed", minimum=0)
        _int(self, "measure_samples", minimum=0)
        _int(self, "checkpoint_every", minimum=0)
        for name in ("patch_size", "image_size", "train_subset"):
            if getattr(self, name) is not None:
                _int(self, name, minimum=1)
        if self.num_workers is not None:
            _int(self, "num_workers", minimum=0)
        if self.threads is not None:
            _int(self, "threads", minimum=1)
        for name in ("lr",):
            _number(self, name, low=0, low_open=True)
        for name in ("min_lr", "weight_decay", "warmup", "momentum", "srr_weight", "srr_lam"):
            _number(self, name, low=0)
        _number(self, "srr_eps", low=0, low_open=True)
        _number(self, "label_smoothing", low=0, high=1)
        _number(self, "val_fraction", low=0, high=1)
        if self.val_fraction >= 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.dropout is not None:
            _number(self, "dropout", low=0, high=1)
        if self.grad_clip is not None:
            _number(self, "grad_clip", low=0, low_open=True)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        parse_layers(self.srr_layers)
        for name in ("model", "dataset", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes``; unknown names are a TypeError listing the valid ones."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown TrainConfig field(s) {unknown}; valid: {sorted(f.name for f in fields(self))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        if not isinstance(data, dict):
            raise TypeError(f"config must be a dict of TrainConfig fields, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"config holds unknown field(s) {unknown}; valid: {sorted(f.name for f in fields(cls))}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """Read a ``config.json`` written by a run."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no run config at {path}") from None
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read the run config {path}: {error}") from None
        return cls.from_dict(data)


def parse_layers(text: str) -> str | list[int]:
    """``"last"``, ``"all"`` or a list of layer indices from ``"0,3,-1"``."""
    if not isinstance(text, str):
        raise ValueError(f"srr_layers must be 'last', 'all' or comma-separated layer indices, got {text!r}")
    if text in ("last", "all"):
        return text
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        layers = []
    if not layers:
        raise ValueError(f"srr_layers must be 'last', 'all' or comma-separated layer indices like '0,3', got {text!r}")
    return layers


def _int(config, name: str, *, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _number(config, name: str, *, low: float, high: float = math.inf, low_open: bool = False) -> None:
    value = getattr(config, name)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        bound += f" and <= {high}" if high != math.inf else ""
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
