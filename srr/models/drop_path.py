"""Stochastic depth (Huang et al. 2016): drop a residual branch per sample during training."""
from __future__ import annotations

from torch import Tensor


def drop_path(branch: Tensor, p: float, training: bool) -> Tensor:
    """Zero ``branch (B, ...)`` for a random fraction ``p`` of samples, rescale the rest by 1/(1−p).

    A function, not a module, so that a block holding it keeps the public state-dict layout.
    """
    if p == 0.0 or not training:
        return branch
    keep = 1.0 - p
    mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.ndim - 1)).bernoulli_(keep)  # (B, 1, ..., 1)
    return branch * mask / keep
