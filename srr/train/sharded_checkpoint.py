"""Sharded checkpoints of an ``--fsdp`` run, through ``torch.distributed.checkpoint`` (DCP).

Layout, beside the run's ``latest.pt`` (srr/train/checkpoint.py)::

    checkpoints/sharded/step-00000120-1a2b3c4d/   model + optimiser, every rank's shards, DCP's .metadata
    checkpoints/latest.pt                          the gathered model (read without FSDP), progress, scheduler,
                                                   RNG, config, and extra["sharded"] = "step-00000120-1a2b3c4d"

The model and optimiser state come from ``get_state_dict`` (keyed by parameter name, global shapes), so a
checkpoint written by N processes loads into any other number: DCP reads each rank's new shard out of the
old ones. Writing is atomic: every rank writes into a hidden ``.step-….tmp`` folder, rank 0 renames it when
DCP has written its metadata (all shards are in by then), and only then is ``latest.pt`` replaced
(atomically) to point at it; older folders are pruned after that. A crash at any moment leaves a
``latest.pt`` whose folder is complete. On a multi-node run ``--out`` must be on a file system every node
sees.
"""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import torch
from torch import nn

from srr.models.checkpoints import CheckpointError

from . import distributed as D

__all__ = ["SHARDED_DIR", "load_sharded", "prune_sharded", "save_sharded"]

SHARDED_DIR = "sharded"


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoints: Path, *, step: int,
                 env: D.DistEnv) -> str:
    """Write ``model`` and ``optimizer`` (collective); the new folder's name under ``checkpoints/sharded``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = Path(checkpoints) / SHARDED_DIR
    # a fresh name every time: a save at a step already saved (after a resume) never touches the old folder
    name = D.broadcast_object(env, f"step-{step:08d}-{secrets.token_hex(4)}")
    tmp = folder / f".{name}.tmp"
    if env.is_main:
        tmp.mkdir(parents=True)
    D.barrier(env)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(tmp))
    if env.is_main:  # DCP's rank 0 writes .metadata after every rank's shards are written
        os.replace(tmp, folder / name)
    D.barrier(env)
    return name


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoints: Path, name: str) -> None:
    """Restore ``model`` and ``optimizer`` (collective) from ``checkpoints/sharded/<name>``, at any world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(checkpoints) / SHARDED_DIR / name
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"the sharded checkpoint {str(path)!r} that latest.pt names is missing or incomplete "
                              f"(no .metadata); the run folder was changed by hand")
    model_state, optimizer_state = get_state_dict(model, optimizer)  # the shapes and shards to read into
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def prune_sharded(checkpoints: Path, *, keep: str) -> None:
    """Remove every sharded folder but ``keep`` (rank 0, after latest.pt points at ``keep``)."""
    folder = Path(checkpoints) / SHARDED_DIR
    for path in folder.iterdir() if folder.is_dir() else ():
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)
