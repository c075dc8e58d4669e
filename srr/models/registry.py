"""The model registry, timm-style: ``register_model``, ``list_models``, ``create_model``.

A registered entry point is a function ``fn(**config_fields) -> nn.Module``; the name it is
registered under is the function's name unless given. ``create_model`` passes only the
arguments the caller set, so each entry point's own defaults (image size, classes, ...) apply.
"""
from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable

from torch import nn

from srr._checks import check_choice
from srr.models.config import VARIANTS
from srr.models.crate import CRATE

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}  # name -> "image" (CRATE classifiers) or "language" (srr/models/lm.py)
TASKS = ("image", "language")


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None, task: str = "image"):
    """Register ``fn`` (decorator, with or without ``name=``) as a model of ``task`` ("image": images to
    logits, "language": token ids to next-token logits). Re-registering a name raises."""
    check_choice(task, "task", TASKS)

    def add(f):
        key = name or f.__name__
        if not isinstance(key, str) or not key:
            raise ValueError(f"name must be a non-empty string, got {key!r}")
        if key in _MODELS and _MODELS[key] is not f:
            raise ValueError(f"a model named {key!r} is already registered")
        _MODELS[key] = f
        _TASKS[key] = task
        return f

    return add(fn) if fn is not None else add


def list_models(pattern: str = "*", *, task: str | None = "image") -> list[str]:
    """Registered names matching the shell-style ``pattern`` (fnmatch), sorted: image models (the default),
    language models (``task="language"``), or both (``task=None``)."""
    if task is not None:
        check_choice(task, "task", TASKS)
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern) and task in (None, _TASKS[n]))


def model_task(name: str) -> str:
    """``"image"`` or ``"language"``: what the registered model ``name`` reads."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {list_models(task=None)}")
    return _TASKS[name]


def list_variants() -> list[str]:
    """The valid values of ``variant`` (descriptions in ``srr.models.config.VARIANTS``)."""
    return list(VARIANTS)


def create_model(name: str | None = None, *, num_classes: int | None = None, image_size: int | None = None,
                 patch_size: int | None = None, in_chans: int | None = None, variant: str | None = None,
                 checkpoint: str | os.PathLike | None = None, pretrained: str | os.PathLike | None = None,
                 **overrides) -> nn.Module:
    """Build the registered model ``name``; ``None`` arguments keep the entry point's defaults.

    ``checkpoint``: a file written by :func:`srr.models.save_checkpoint` (its stored config
    rebuilds the model, ``name`` may be omitted; arguments given here override the config), or a
    state dict of the public CRATE code (``name`` required, ``variant="crate"``). Loading is
    strict: missing, unexpected or mis-shaped keys raise a ``CheckpointError`` listing them.

    ``pretrained``: weights to start from (fine-tuning): a :func:`srr.models.save_pretrained`
    folder, a run folder, an srr checkpoint, a ``.safetensors`` file, a public CRATE checkpoint
    (``name`` required for it) or ``hf://owner/repo`` on the Hugging Face hub (needs ``huggingface_hub``).
    As strict, except that a ``num_classes`` given here that differs re-initialises the head, and a
    different ``image_size`` interpolates the position embedding (srr/models/pretrained.py).
    """
    given = {k: v for k, v in dict(num_classes=num_classes, image_size=image_size, patch_size=patch_size,
                                   in_chans=in_chans, variant=variant).items() if v is not None}
    given.update(overrides)
    if variant is not None:
        check_choice(variant, "variant", list(VARIANTS))
    if checkpoint is not None and pretrained is not None:
        raise ValueError("pass checkpoint= (an exact reload) or pretrained= (weights to fine-tune), not both")
    if pretrained is not None:
        from srr.models.pretrained import load_pretrained

        return load_pretrained(pretrained, name=name, build=_build, model_class=CRATE, **given)
    if checkpoint is not None:
        from srr.models.checkpoints import create_from_checkpoint

        return create_from_checkpoint(checkpoint, name=name, build=_build, model_class=CRATE, **given)
    if name is None:
        raise ValueError(f"name is required without a checkpoint; registered models: {list_models()}")
    return _build(name, **given)


def _build(name: str, **given) -> nn.Module:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {list_models(task=None)}")
    return _MODELS[name](**given)
