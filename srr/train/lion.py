"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2), the optimiser of
YU23's ImageNet runs and of the public CRATE code.

Per parameter ``p`` with gradient ``g`` and momentum ``m`` (zero at the start), one step is

    p ← p − lr · (sign(β₁·m + (1 − β₁)·g) + wd · p)        (decoupled decay, as AdamW's)
    m ← β₂·m + (1 − β₂)·g

Why our own and not ``timm.optim.Lion``: the rule is five lines, and a run's update must not change with
the installed timm version (exact resume across environments). ``tests/test_optim.py`` checks this
implementation against the rule above in float64 and against ``timm.optim.Lion`` where timm is installed.
"""
from __future__ import annotations

import torch


class Lion(torch.optim.Optimizer):
    """``Lion(params, lr, betas=(0.9, 0.99), weight_decay=0.0)``; its state is one ``exp_avg`` (m) per parameter."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {beta}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, g = state["exp_avg"], p.grad
                update = torch.lerp(g, m, beta1).sign_()  # sign(β₁m + (1−β₁)g)
                if wd:
                    p.mul_(1.0 - lr * wd)
                p.add_(update, alpha=-lr)
                m.lerp_(g, 1.0 - beta2)  # β₂m + (1−β₂)g
        return loss
