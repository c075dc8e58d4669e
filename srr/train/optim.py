"""The optimiser of a run: AdamW, Adam or SGD over ``srr.models.param_groups`` (no decay on norms,
biases and embeddings), with the warm-up + cosine schedule of :mod:`srr.train.schedule`."""
from __future__ import annotations

import torch
from torch import nn

from srr.models import param_groups

from .config import TrainConfig
from .schedule import WarmupCosine


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, config.weight_decay, layer_decay=config.layer_decay, lr=config.lr)
    groups = [g for g in groups if g["params"]]  # with layer decay the first is the head's, at the full rate
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "adam":
        # Adam's weight decay is an L2 term added to the gradient (coupled), as in torch.optim.Adam.
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    raise ValueError(f"optimizer must be one of adamw, adam, sgd, got {config.optimizer!r}")


def warmup_steps(config: TrainConfig, *, steps_per_epoch: int) -> int:
    """The warm-up in optimiser steps. A warm-up that would cover the whole run (``--epochs 1`` with the
    default 2 epochs of it) would end the run at peak rate, never decaying: it is cut to a tenth of the
    run instead (:func:`warmup_note` says so)."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup * steps_per_epoch)
    if warmup >= total and total > 1:
        return max(1, total // 10)
    return min(warmup, total)


def warmup_note(config: TrainConfig, *, steps_per_epoch: int) -> str | None:
    """One line when :func:`warmup_steps` cut the warm-up; None otherwise."""
    total = config.epochs * steps_per_epoch
    steps = warmup_steps(config, steps_per_epoch=steps_per_epoch)
    if steps == min(round(config.warmup * steps_per_epoch), total):
        return None
    return (f"--warmup {config.warmup:g} epochs would cover the whole {config.epochs}-epoch run (it would end at the "
            f"peak learning rate); warming up for {steps} of its {total} steps instead (pass a --warmup below "
            f"--epochs to choose)")


def build_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, *, steps_per_epoch: int) -> WarmupCosine:
    total = config.epochs * steps_per_epoch
    warmup = warmup_steps(config, steps_per_epoch=steps_per_epoch)
    return WarmupCosine(optimizer, total_steps=total, warmup_steps=warmup, min_lr=min(config.min_lr, config.lr))
