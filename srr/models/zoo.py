"""The built-in CRATE configurations.

Public sizes (Yu et al. 2023; MATH.md §4.3), at 224 px, patch 16, 1000 classes by default:
``crate_tiny`` (d 384, L 12, K 6, p 64: 6.09M), ``crate_small`` (576, 12, 12, 48: 13.12M),
``crate_base`` (768, 12, 12, 64: 22.80M), ``crate_large`` (1024, 24, 16, 64: 77.64M).

Small sizes that train in minutes on a CPU:
``crate_nano``  — 8×8 grey images (sklearn digits), patch 4, d 64, L 4, K 4, p 16, 10 classes:
                  AdamW (lr 3e-3, weight decay 0.05, one-cycle), batch 64, 30 epochs reach ~97% test
                  accuracy on digits in ~15 s on one CPU core. (Patch 2 overfits, ~94%.)
``crate_micro`` — 32×32 RGB (CIFAR-10), patch 4, d 128, L 6, K 4, p 32, 10 classes.
"""
from __future__ import annotations

from srr.models.config import CRATEConfig
from srr.models.crate import CRATE
from srr.models.registry import register_model

PUBLIC = dict(image_size=224, patch_size=16, in_chans=3, num_classes=1000)


def _crate(name: str, defaults: dict, given: dict) -> CRATE:
    return CRATE(CRATEConfig(**defaults).replace(**given, name=name))


@register_model
def crate_tiny(**kwargs) -> CRATE:
    return _crate("crate_tiny", dict(PUBLIC, dim=384, depth=12, heads=6, head_dim=64), kwargs)


@register_model
def crate_small(**kwargs) -> CRATE:
    return _crate("crate_small", dict(PUBLIC, dim=576, depth=12, heads=12, head_dim=48), kwargs)


@register_model
def crate_base(**kwargs) -> CRATE:
    return _crate("crate_base", dict(PUBLIC, dim=768, depth=12, heads=12, head_dim=64), kwargs)


@register_model
def crate_large(**kwargs) -> CRATE:
    return _crate("crate_large", dict(PUBLIC, dim=1024, depth=24, heads=16, head_dim=64), kwargs)


@register_model
def crate_nano(**kwargs) -> CRATE:
    return _crate("crate_nano", dict(image_size=8, patch_size=4, in_chans=1, num_classes=10,
                                     dim=64, depth=4, heads=4, head_dim=16), kwargs)


@register_model
def crate_micro(**kwargs) -> CRATE:
    return _crate("crate_micro", dict(image_size=32, patch_size=4, in_chans=3, num_classes=10,
                                      dim=128, depth=6, heads=4, head_dim=32), kwargs)
