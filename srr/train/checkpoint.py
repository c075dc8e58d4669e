"""Training checkpoints: a model checkpoint of ``srr.models`` plus everything needed to resume.

The file is ``srr.models.save_checkpoint``'s format (so ``create_model(checkpoint=path)`` and
``srr eval`` read it as a model), written atomically (temporary file + rename), with the
training state under ``extra``:

- ``progress``: completed epochs, batches done in the current epoch, global step, best val
  accuracy and its epoch, the world size, and the running sums of the epoch in progress;
- ``optimizer`` / ``scheduler``: their ``state_dict()``;
- ``rng``: one :func:`srr.train.state.capture_rng` per rank;
- ``train_config``: the run's ``TrainConfig`` as a dict;
- ``sharded`` (``--fsdp`` runs only): the folder under ``checkpoints/sharded`` holding the model and
  optimiser shards (srr/train/sharded_checkpoint.py); ``optimizer`` is then None and ``state_dict`` the
  gathered model, for readers without FSDP.
- ``ema`` (runs with ``ema_decay``): the EMA weights and their step count (srr/train/ema.py).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from srr.models import read_checkpoint, save_checkpoint
from srr.models.checkpoints import CheckpointError, umask_mode


def save_training_checkpoint(
    path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, progress: dict,
    rng: list[dict], train_config: dict, sharded: str | None = None, ema: dict | None = None,
) -> Path:
    extra = {
        "progress": dict(progress),
        "optimizer": optimizer.state_dict() if sharded is None else None,  # FSDP: in the sharded folder
        "scheduler": scheduler.state_dict(),
        "rng": rng,
        "train_config": dict(train_config),
    }
    if sharded is not None:
        extra["sharded"] = sharded
    if ema is not None:
        extra["ema"] = ema
    return save_checkpoint(model, path, extra=extra)


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.fchmod(fd, umask_mode())
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_training_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path`` as a dict; a CheckpointError if it holds no training state."""
    obj = read_checkpoint(path)
    extra = obj.get("extra")
    if not isinstance(extra, dict) or not {"progress", "optimizer", "scheduler", "rng"} <= set(extra):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a model but no training state; "
                              f"--resume needs a checkpoint written by srr train")
    return obj
