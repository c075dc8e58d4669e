"""A small in-memory training loop for the experiments (CIFAR-10, digits, synthetic subspaces; CPU or GPU).

``srr train`` (``srr.train.train``) is the library's loop: run folders, checkpoints, resume,
schedules. The experiments train hundreds of tiny models and need what it does not do — stop
when the training cross-entropy reaches a target (HU24 §5's criterion) and hand back the
model in memory — so they use this loop: plain cross-entropy (no label smoothing), whole data
sets as tensors, minibatches from a seeded generator, optionally plus an
:class:`srr.measurement.SRRRegularizer` term, exactly as ``docs/guide-regularize.md`` shows.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from srr.data import as_tensors, load_dataset

Data = tuple[Tensor, Tensor]  # images (n, C, H, W), labels (n,)


def load_split(dataset: str, split: str, **options) -> Data:
    """``(images, labels)`` of a registered in-memory dataset (``digits``, ``subspaces``)."""
    return as_tensors(load_dataset(dataset, split=split, **options))


def subspace_options(num_train: int = 1000, num_test: int = 500) -> dict:
    """The synthetic data of the experiments: 10 random 4-dim subspaces of R^64 (8×8 images)."""
    return dict(num_subspaces=10, subspace_dim=4, noise=0.1, num_train=num_train, num_test=num_test)


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data`` (eval mode)."""
    was = model.training
    model.eval()
    X, y = data
    loss = correct = 0.0
    for xb, yb in zip(X.split(batch_size), y.split(batch_size)):
        logits = model(xb)
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += float((logits.argmax(-1) == yb).sum())
    model.train(was)
    return loss / len(y), correct / len(y)


@dataclass
class FitResult:
    epochs: int
    steps: int
    train_loss: float  # full-pass training cross-entropy (eval mode) at the end
    reached_target: bool
    seconds: float
    history: list[dict] = field(default_factory=list)


def fit(model: nn.Module, train: Data, *, epochs: int, batch_size: int, lr: float, seed: int,
        optimizer: str = "adam", weight_decay: float = 0.0, target_loss: float | None = None,
        regularizer: Callable[[Tensor], Tensor] | None = None, extra_params=(),
        on_epoch: Callable[[int, nn.Module], None] | None = None, check_every: int = 1,
        augment: Callable[[Tensor], Tensor] | None = None, cosine: bool = False) -> FitResult:
    """Train ``model`` on ``train`` with cross-entropy (+ ``regularizer(labels)`` if given).

    ``target_loss``: stop at the first epoch end whose full-pass training cross-entropy is
    ``<= target_loss`` (checked every ``check_every`` epochs), else after ``epochs``. The learning
    rate is constant (the stopping criterion, not a schedule, ends the run) unless ``cosine``
    (cosine decay to 0 over ``epochs``, per step). ``augment`` maps each training batch before the
    forward pass. ``on_epoch(e, model)`` is called after epoch ``e`` (and with ``e = 0`` before
    training).
    """
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    opt = (torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if optimizer == "adamw"
           else torch.optim.Adam(params, lr=lr) if optimizer == "adam"
           else torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay))
    X, y = train
    total_steps = epochs * math.ceil(len(y) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / total_steps))) \
        if cosine else None
    started, steps, history = time.perf_counter(), 0, []
    if on_epoch is not None:
        on_epoch(0, model)
    train_loss, reached, epoch = math.nan, False, 0
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(y), generator=g).split(batch_size):
            idx = idx.to(X.device)
            xb = X[idx] if augment is None else augment(X[idx])
            logits = model(xb)
            loss = F.cross_entropy(logits, y[idx])
            if regularizer is not None:
                loss = loss + regularizer(y[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {steps}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            steps += 1
        if on_epoch is not None:
            on_epoch(epoch, model)
        if target_loss is not None and (epoch % check_every == 0 or epoch == epochs):
            train_loss = evaluate(model, train)[0]
            history.append({"epoch": epoch, "train_loss": train_loss})
            if train_loss <= target_loss:
                reached = True
                break
    if target_loss is None or not history or history[-1]["epoch"] != epoch:
        train_loss = evaluate(model, train)[0]
    return FitResult(epoch, steps, train_loss, reached, time.perf_counter() - started, history)


def throughput(model: nn.Module, X: Tensor, *, batch_size: int = 256, repeats: int = 3, train: bool = False) -> float:
    """Images per second of a forward pass (``train=True``: forward + backward), best of ``repeats``."""
    xb = X[:batch_size]
    best = math.inf
    for _ in range(repeats + 1):  # the first pass warms up
        t = time.perf_counter()
        if train:
            model.train()
            model(xb).sum().backward()
            model.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad():
                model(xb)
        best = min(best, time.perf_counter() - t) if _ else math.inf
    return len(xb) / best
