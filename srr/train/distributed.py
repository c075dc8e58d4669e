"""Data-parallel plumbing: detect ``torchrun``, pick the backend and device, gate rank 0.

``torchrun --nproc_per_node=N -m srr train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` then joins the process group (gloo on CPU, NCCL on CUDA). Without
them the run is a single process and every helper here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False  # we created the process group, so we destroy it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(name: str, *, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` if CUDA is available, else ``mps`` if available, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for CUDA, which is not available here; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        elif device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} names a GPU that is not here: this machine has "
                             f"{torch.cuda.device_count()} (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r} asked for MPS, which is not available here; use --device cpu")
    return device


def setup(device: str = "auto", *, group_of_one: bool = False) -> DistEnv:
    """Join the ``torchrun`` process group if launched by it; return this process's place.

    ``group_of_one``: a single process still gets a process group (of one rank, destroyed by
    :func:`teardown`), for code that needs one whatever the world size (``--fsdp``)."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        dev = resolve_device(device)
        if not group_of_one or dist.is_initialized():
            return DistEnv(device=dev)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        return DistEnv(device=dev, initialized_here=True)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank=local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
        created = True
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, initialized_here=created)


def teardown(env: DistEnv) -> None:
    if env.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def broadcast_object(env: DistEnv, value):
    """Rank 0's ``value`` on every rank."""
    if not env.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(env: DistEnv, value) -> list:
    """Every rank's ``value``, in rank order, on every rank."""
    if not env.distributed:
        return [value]
    out = [None] * env.world_size
    dist.all_gather_object(out, value)
    return out


def all_reduce_sum(env: DistEnv, tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (in place, also returned)."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
