"""Exponential moving average of a model's weights, with timm's warm-up (``ModelEmaV3``).

After optimiser step ``t`` (1-based) every floating-point parameter and buffer ``θ̄`` of the copy
moves towards the model's ``θ``:

    θ̄ ← d_t · θ̄ + (1 − d_t) · θ,   d_t = 0 at t = 1,  then  d_t = min(D, 1 − t^(−2/3))  (warm-up)
                                                      or   d_t = D                     (no warm-up)

(``ModelEmaV3(use_warmup=True, warmup_gamma=1, warmup_power=2/3)``: with ``t`` steps done the average
weighs roughly the last ``t^(2/3)`` of them, so early weights, far from the optimum, fade quickly).
Integer buffers are copied. The copy is evaluated beside the raw weights and checkpointed with them.

Why our own and not a thin adapter of ``timm.utils.ModelEmaV3``: this rule is a few lines, and checkpoints
must not depend on timm's state-dict layout across its versions; ``tests/test_optim.py`` checks it against
the formula in float64 and against ``ModelEmaV3``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, *, decay: float, warmup: bool = True) -> float:
    """``d_t`` of the module docstring after optimiser step ``step`` (1-based)."""
    if not warmup:
        return decay
    if step <= 1:
        return 0.0
    return min(decay, 1.0 - step ** (-2.0 / 3.0))


class ModelEMA(nn.Module):
    """``ModelEMA(model, decay=D, warmup=True)``; ``update(model, step)`` after each optimiser step;
    ``module`` is the averaged copy (always in eval mode, no gradients)."""

    def __init__(self, model: nn.Module, *, decay: float, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.steps = 0  # optimiser steps averaged in

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = ema_decay_at(step, decay=self.decay, warmup=self.warmup)
        mine, theirs = self.module.state_dict(), model.state_dict()
        averaged = [(mine[k], v) for k, v in theirs.items() if mine[k].is_floating_point()]
        if averaged:
            ema, new = zip(*averaged)
            torch._foreach_lerp_(list(ema), list(new), 1.0 - d)
        for k, v in theirs.items():
            if not mine[k].is_floating_point():
                mine[k].copy_(v)
        self.steps = int(step)

    def state(self) -> dict:
        """What a checkpoint stores: the averaged weights and the step count."""
        return {"state_dict": self.module.state_dict(), "steps": self.steps}

    def load_state(self, state: dict) -> None:
        self.module.load_state_dict(state["state_dict"])
        self.steps = int(state["steps"])
