"""Coding rates of a token set spread over ``torch.distributed`` ranks (MATH.md §6, last paragraph).

Details (equations, costs, conventions): ``docs/guide-measurement.md``, section ``srr/measurement/distributed.py``.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


__all__ = ["all_reduce_sum", "global_gram", "global_mean", "is_distributed"]


def is_distributed(group=None) -> bool:
    """True when a process group is initialised and holds more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def all_reduce_sum(tensor: Tensor, group=None) -> Tensor:
    """Sum over ranks, differentiable (``torch.distributed.nn``); the identity on one process."""
    if not is_distributed(group):
        return tensor
    from torch.distributed.nn.functional import all_reduce

    if tensor.requires_grad:
        return all_reduce(tensor, group=group or dist.group.WORLD)
    tensor = tensor.clone()
    dist.all_reduce(tensor, group=group)
    return tensor


def global_gram(F: Tensor, group=None) -> tuple[Tensor, int]:
    """``(FᵀF summed over ranks (d, d), global number of rows n)`` for features ``F (n_local, d)``.

    The Gram matrix is formed in float64 with autocast off, then all-reduced: with fewer rows
    than features (n < d) it is singular, and float32 rounding (relative 1e-7 of ‖F‖²) would make
    ``I + αG`` indefinite once α‖F‖² exceeds ~1e7, where float64 keeps it positive definite.
    """
    if F.ndim != 2:
        raise ValueError(f"F must have shape (n, d) (one feature row per sample), got shape {tuple(F.shape)}")
    with torch.autocast(F.device.type, enabled=False):
        F = F.double()
        G = all_reduce_sum(F.mT @ F, group)  # (d, d), float64
    n = all_reduce_sum(torch.tensor(float(F.shape[0]), device=F.device), group)
    return G, int(n.item())


def global_mean(values: Tensor, group=None) -> Tensor:
    """Mean of ``values (n_local,)`` over the rows of all ranks: all-reduced sum / global count."""
    total = all_reduce_sum(values.sum(), group)
    count = all_reduce_sum(torch.tensor(float(values.numel()), device=values.device), group)
    return total / count

