"""The optimiser of a run: AdamW, Adam, SGD or Lion over ``srr.models.param_groups`` (no decay on norms,
biases and embeddings), with the warm-up + cosine schedule of :mod:`srr.train.schedule`, stepped once
per optimiser step (after the last of ``grad_accum`` micro-steps), never per micro-step.

Batch arithmetic (docs/guide-scale.md): one optimiser step sees the global batch

    G = batch_size · world_size · grad_accum

``--global-batch G`` fixes G and derives ``grad_accum = G / (batch_size · world_size)`` (it must divide).
``--lr-scaling`` relates ``--lr`` to G with base batch 256: ``none`` keeps it, ``linear`` uses
``lr · G/256`` (Goyal et al. 2017), ``sqrt`` uses ``lr · √(G/256)`` (Krizhevsky 2014; the usual rule for
Adam-type optimisers).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from srr.models import param_groups

from .config import TrainConfig, parse_betas
from .lion import Lion
from .schedule import WarmupCosine

LR_BASE_BATCH = 256  # the batch at which --lr is meant when --lr-scaling is linear or sqrt


def resolve_grad_accum(config: TrainConfig, *, world_size: int) -> int:
    """``grad_accum`` of the run: ``config.grad_accum``, or ``G / (batch_size · world_size)`` from
    ``--global-batch G`` (a ValueError naming the options when it does not divide or contradicts
    an explicit ``--grad-accum``)."""
    per_step = config.batch_size * world_size
    if config.global_batch is None:
        return config.grad_accum
    if config.global_batch % per_step:
        raise ValueError(
            f"--global-batch {config.global_batch} must be a multiple of --batch-size × world size "
            f"({config.batch_size} × {world_size} = {per_step}); choose --batch-size so that it divides, "
            f"or drop --global-batch and set --grad-accum")
    accum = config.global_batch // per_step
    if config.grad_accum not in (1, accum):
        raise ValueError(f"--grad-accum {config.grad_accum} contradicts --global-batch {config.global_batch} "
                         f"(= --batch-size {config.batch_size} × world size {world_size} × {accum}); give one of them")
    return accum


def scaled_lr(lr: float, *, rule: str, global_batch: int) -> float:
    """The peak rate for global batch ``global_batch`` under ``rule`` (none, linear, sqrt; base 256)."""
    if rule == "none":
        return lr
    ratio = global_batch / LR_BASE_BATCH
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    raise ValueError(f"lr_scaling must be one of none, linear, sqrt, got {rule!r}")


def build_optimizer(model: nn.Module, config: TrainConfig, *, lr: float | None = None) -> torch.optim.Optimizer:
    """The optimiser of ``config`` at peak rate ``lr`` (default ``config.lr``; the loop passes the scaled one)."""
    lr = config.lr if lr is None else lr
    groups = param_groups(model, config.weight_decay, layer_decay=config.layer_decay, lr=lr)
    groups = [g for g in groups if g["params"]]  # with layer decay the first is the head's, at the full rate
    betas = {} if config.betas is None else {"betas": parse_betas(config.betas)}
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **betas)
    if config.optimizer == "adam":
        # Adam's weight decay is an L2 term added to the gradient (coupled), as in torch.optim.Adam.
        return torch.optim.Adam(groups, lr=lr, **betas)
    if config.optimizer == "sgd":
        if betas:
            raise ValueError(f"--betas applies to adam, adamw and lion, not sgd (got --betas {config.betas})")
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.momentum > 0)
    if config.optimizer == "lion":
        return Lion(groups, lr=lr, **betas)  # decoupled decay from each group's weight_decay (srr/train/lion.py)
    raise ValueError(f"optimizer must be one of adamw, adam, sgd, lion, got {config.optimizer!r}")


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
    """Warm-up + cosine over ``config.epochs · steps_per_epoch`` optimiser steps (``steps_per_epoch`` counts
    optimiser steps, i.e. micro-batches / ``grad_accum`` rounded up)."""
    total = config.epochs * steps_per_epoch
    warmup = warmup_steps(config, steps_per_epoch=steps_per_epoch)
    return WarmupCosine(optimizer, total_steps=total, warmup_steps=warmup, min_lr=min(config.min_lr, config.lr))
