"""Optimizer parameter groups: weight decay on weight matrices only, optional layer-wise lr decay.

No decay on norms and biases (every parameter with ``ndim <= 1``) nor on the names a model lists
in ``no_weight_decay()`` (CRATE: ``pos_embedding``, ``cls_token``), as in timm/DeiT training.
Layer-wise learning-rate decay (BEiT/MAE fine-tuning): layer ℓ (0-based) of L gets the rate scaled by
``layer_decay ** (L - ℓ)``, the embeddings ``layer_decay ** (L + 1)``, the head 1.
"""
from __future__ import annotations

from torch import nn

from srr._checks import check_nonnegative, check_number, check_positive


def param_groups(model: nn.Module, weight_decay: float, *, skip: set[str] | None = None,
                 layer_decay: float | None = None, lr: float | None = None) -> list[dict]:
    """``[{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]``.

    Frozen parameters (``requires_grad=False``) are left out; each group also carries
    ``"names"`` (the parameter names, for logging; optimizers ignore unknown keys).
    ``layer_decay`` (in (0, 1]; needs ``lr`` and a model with ``blocks()``): one such pair per depth,
    each with ``"lr" = lr · scale`` and ``"lr_scale"``, the head's (scale 1) first.
    """
    check_nonnegative(weight_decay, "weight_decay")
    skip = set(skip or ()) | set(getattr(model, "no_weight_decay", lambda: set())())
    depth = None
    if layer_decay is not None:
        check_number(layer_decay, "layer_decay", low=0.0, high=1.0, low_open=True)
        check_positive(lr, "lr")
        depth = len(model.blocks())
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip
        level = _depth_of(name, depth) if depth is not None else 0
        group = groups.setdefault((level, no_decay), {"params": [], "names": [],
                                                      "weight_decay": 0.0 if no_decay else float(weight_decay)})
        group["params"].append(p)
        group["names"].append(name)
    if depth is None:
        return [groups.get((0, False), {"params": [], "names": [], "weight_decay": float(weight_decay)}),
                groups.get((0, True), {"params": [], "names": [], "weight_decay": 0.0})]
    out = []
    for (level, _), group in sorted(groups.items(), key=lambda item: (-item[0][0], item[0][1])):
        scale = layer_decay ** (depth + 1 - level)
        out.append({**group, "lr": lr * scale, "lr_scale": scale})
    return out


def _depth_of(name: str, depth: int) -> int:
    """0: embeddings, ℓ + 1: layer ℓ, depth + 1: everything after the layers (norm, head)."""
    if name.startswith("transformer.layers."):
        return int(name.split(".")[2]) + 1
    if name.startswith(("to_patch_embedding", "pos_embedding", "cls_token")):
        return 0
    return depth + 1
