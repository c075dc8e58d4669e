"""Optimizer parameter groups: weight decay on weight matrices only.

No decay on norms and biases (every parameter with ``ndim <= 1``) nor on the names a model lists
in ``no_weight_decay()`` (CRATE: ``pos_embedding``, ``cls_token``), as in timm/DeiT training.
"""
from __future__ import annotations

from torch import nn

from srr._checks import check_nonnegative


def param_groups(model: nn.Module, weight_decay: float, *, skip: set[str] | None = None) -> list[dict]:
    """``[{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]``.

    Frozen parameters (``requires_grad=False``) are left out; each group also carries
    ``"names"`` (the parameter names, for logging; optimizers ignore unknown keys).
    """
    check_nonnegative(weight_decay, "weight_decay")
    skip = set(skip or ()) | set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = ([], []), ([], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        target = no_decay if p.ndim <= 1 or name in skip else decay
        target[0].append(p)
        target[1].append(name)
    return [
        {"params": decay[0], "names": decay[1], "weight_decay": float(weight_decay)},
        {"params": no_decay[0], "names": no_decay[1], "weight_decay": 0.0},
    ]
