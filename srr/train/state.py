"""Random-number-generator state of a process, as plain tensors and lists.

Captured into every checkpoint and restored on ``--resume``, so dropout, augmentation and any
other draw continue exactly where they stopped. Everything is stored as tensors, ints and
lists, so a checkpoint loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng() -> dict:
    """The torch (CPU and CUDA), numpy and python generator states of this process."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and python from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def restore_rank_rng(saved: list[dict], *, rank: int, world_size: int, seed: int, step: int) -> None:
    """Restore this rank's generators from a checkpoint's per-rank ``saved`` states; at another world size
    (no state is this rank's) reseed reproducibly from ``(seed, rank, step)`` instead."""
    if len(saved) == world_size:
        restore_rng(saved[rank])
    else:
        seed_everything(seed + rank + 1000 * step)
