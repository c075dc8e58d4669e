"""Learning-rate schedule: linear warm-up, then cosine decay to a floor, stepped per optimiser step.

The rate is a pure function of the step count, so the scheduler's whole state is that count:
a resumed run gets exactly the rate the uninterrupted one would have had.
"""
from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, *, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Rate at optimiser step ``step`` (0-based): ``base_lr·(step+1)/warmup_steps`` while warming
    up, then ``min_lr + (base_lr − min_lr)·½(1 + cos(π·t))`` with ``t`` going 0 → 1 over the rest."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    t = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


class WarmupCosine:
    """Sets every param group's ``lr`` from :func:`warmup_cosine`; ``step()`` after each optimiser step.

    Groups keep their own ``initial_lr`` (so a group with a scaled rate stays scaled); ``min_lr``
    is scaled with it.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, min_lr: float = 0.0
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.optimizer = optimizer
        self.total_steps, self.warmup_steps, self.min_lr = total_steps, warmup_steps, min_lr
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.step_count = 0
        self._apply()

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            base = group["initial_lr"]
            floor = self.min_lr * base / self.base_lr if self.base_lr > 0 else 0.0
            group["lr"] = warmup_cosine(
                self.step_count, base_lr=base, min_lr=min(floor, base),
                warmup_steps=self.warmup_steps, total_steps=self.total_steps,
            )

    @property
    def base_lr(self) -> float:
        return self.optimizer.param_groups[0]["initial_lr"]

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "min_lr": self.min_lr}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.total_steps, self.warmup_steps = int(state["total_steps"]), int(state["warmup_steps"])
        self.min_lr = float(state["min_lr"])
        self._apply()
