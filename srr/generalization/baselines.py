"""Baseline complexity measures that HU24 §5 ranks SRR against (MATH.md §5).

Details (equations, costs, conventions): ``docs/guide-generalization.md``, section ``srr/generalization/baselines.py``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from srr._checks import check_choice, check_int, check_nonnegative, check_positive

__all__ = [
    "classification_error",
    "frobenius_product",
    "frobenius_sum",
    "inverse_margin",
    "output_margins",
    "path_norm",
    "perturbation_sigma",
    "sharpness",
    "spectral_product",
    "spectral_sum",
    "weight_matrices",
]

Select = Callable[[str, Tensor], bool]


def _is_weight_matrix(name: str, parameter: Tensor) -> bool:
    return parameter.ndim >= 2


def _check_module(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


@contextmanager
def _evaluating(model: nn.Module):
    """Eval mode inside; afterwards every submodule gets back its own ``training`` flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _reference(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.device, parameter.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _forward(model: nn.Module, parameters: dict[str, Tensor], x: Tensor) -> Tensor:
    out = functional_call(model, parameters, (x,))
    if not isinstance(out, Tensor):
        raise TypeError(f"model must return a tensor of outputs (logits), got {type(out).__name__}")
    return out


def _batches(data, name: str = "data") -> Iterable:
    """``(x, y)`` as one batch, or a re-iterable of ``(x, y)`` batches (a DataLoader, a list)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return [tuple(data)]
    if not isinstance(data, Iterable) or iter(data) is data:
        raise TypeError(
            f"{name} must be an (x, y) pair of tensors or a re-iterable of (x, y) batches "
            f"(a DataLoader or a list), got {type(data).__name__}"
        )
    return data


def _pairs(data, device: torch.device, name: str = "data"):
    for index, batch in enumerate(_batches(data, name)):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"{name} batch {index} must be an (x, y) pair, got {type(batch).__name__}")
        x, y = batch
        yield x.to(device), y.to(device)


# --------------------------------------------------------------------------- norm measures

def weight_matrices(model: nn.Module, *, select: Select | None = None) -> list[tuple[str, Tensor]]:
    """``(name, W)`` for each weight matrix of ``model``, ``W`` detached and shaped ``(out, -1)``.

    By default a weight matrix is a parameter with ``ndim >= 2`` (biases and norm-layer vectors,
    ``ndim < 2``, are skipped); ``select(name, parameter) -> bool`` replaces that rule.
    """
    select = _is_weight_matrix if select is None else select
    return [
        (name, p.detach().reshape(p.shape[0], -1))
        for name, p in _check_module(model).named_parameters()
        if select(name, p)
    ]


def _log_squared_norms(model: nn.Module, ord: Literal["fro", 2], select: Select | None) -> Tensor:
    """``log ‖W_i‖²`` for every weight matrix, in float64, shape ``(d,)``."""
    matrices = weight_matrices(model, select=select)
    if not matrices:
        raise ValueError(f"model must have at least one weight matrix (a parameter with ndim >= 2 or one chosen by "
                         f"select), got none in {type(model).__name__}")
    norms = torch.stack([torch.linalg.matrix_norm(W.to(torch.float64), ord=ord).cpu() for _, W in matrices])
    return 2 * norms.log()


def frobenius_product(model: nn.Module, *, select: Select | None = None) -> float:
    """Jiang et al.'s "prod-of-fro": ``log Π_i ‖W_i‖_F² = Σ_i log ‖W_i‖_F²``.

    Returned as the log of the product because the product itself overflows for deep or wide
    models. Weight matrices as in the module docstring (``ndim >= 2``, reshaped to
    ``(out, -1)``). A zero matrix gives ``-inf``.
    """
    return float(_log_squared_norms(model, "fro", select).sum())


def frobenius_sum(model: nn.Module, *, rebalanced: bool = True, select: Select | None = None) -> float:
    """Jiang et al.'s "sum-of-fro": ``log(d · (Π_i ‖W_i‖_F²)^{1/d})`` over the d weight matrices.

    For a ReLU network, rescaling ``W_i → c_i W_i`` with ``Π_i c_i = 1`` leaves the function
    unchanged, and by AM–GM ``min_c Σ_i c_i² ‖W_i‖_F² = d (Π_i ‖W_i‖_F²)^{1/d}``; Jiang et al.
    use this rebalanced sum (in log). ``rebalanced=False`` gives the literal, not
    rescaling-invariant sum ``Σ_i ‖W_i‖_F²`` (their "param-norm") instead.
    """
    log_squared = _log_squared_norms(model, "fro", select)
    if not rebalanced:
        return float(log_squared.exp().sum())
    return math.log(len(log_squared)) + float(log_squared.mean())


def spectral_product(model: nn.Module, *, select: Select | None = None) -> float:
    """Jiang et al.'s "prod-of-spec": ``log Π_i ‖W_i‖_2² = Σ_i log σ_max(W_i)²`` (log to avoid overflow).

    A Conv kernel is reshaped to ``(out, in·kh·kw)`` before its largest singular value is taken;
    this bounds the kernel, not the convolution operator (whose exact norm needs the input size;
    Jiang et al. report both).
    """
    return float(_log_squared_norms(model, 2, select).sum())


def spectral_sum(model: nn.Module, *, rebalanced: bool = True, select: Select | None = None) -> float:
    """Jiang et al.'s "sum-of-spec": ``log(d · (Π_i ‖W_i‖_2²)^{1/d})``, rebalanced as in ``frobenius_sum``.

    ``rebalanced=False`` gives the literal sum ``Σ_i ‖W_i‖_2²``.
    """
    log_squared = _log_squared_norms(model, 2, select)
    if not rebalanced:
        return float(log_squared.exp().sum())
    return math.log(len(log_squared)) + float(log_squared.mean())


# --------------------------------------------------------------------------- path-norm

@torch.no_grad()
def path_norm(model: nn.Module, input_shape: tuple[int, ...] | torch.Size) -> float:
    """Neyshabur et al.'s (squared ℓ2) path-norm, Jiang et al.'s "path-norm": ``Σ_j f_{w∘w}(1)_j``.

    Every parameter (weights and biases) is squared, an all-ones input of shape
    ``(1, *input_shape)`` is forwarded, and the outputs are summed. For a network of linear /
    conv layers and ReLUs this equals the sum over all input→output paths of the product of the
    squared weights along the path (a bias counts as a path from a constant-1 unit): with w∘w ≥ 0
    every ReLU is the identity. For other networks (GELU, softmax attention, LayerNorm — which maps
    a constant vector to zero before its affine part) it is the standard proxy, not an exact
    path sum. Buffers (e.g. BatchNorm running statistics) are used as they are, not squared.
    """
    _check_module(model)
    device, dtype = _reference(model)
    squared = {name: p.detach() ** 2 for name, p in model.named_parameters()}
    x = torch.ones((1, *tuple(input_shape)), device=device, dtype=dtype)
    with _evaluating(model):
        return float(_forward(model, squared, x).to(torch.float64).sum())


# --------------------------------------------------------------------------- margin

def output_margins(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-example output margin ``γ_k = f(x_k)[y_k] − max_{j ≠ y_k} f(x_k)[j]``, shape ``(B,)``.

    ``logits`` is ``(B, C)`` with ``C >= 2``, ``targets`` ``(B,)`` integer class indices.
    Negative for a misclassified example.
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (B, C) with C >= 2 classes, got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must have shape ({logits.shape[0]},) to match logits, got shape "
                         f"{tuple(targets.shape)}")
    rows = torch.arange(logits.shape[0], device=logits.device)
    true_logit = logits[rows, targets]
    others = logits.masked_fill(nn.functional.one_hot(targets, logits.shape[1]).bool(), -math.inf)
    return true_logit - others.amax(dim=1)


@torch.no_grad()
def inverse_margin(model: nn.Module, data, *, percentile: float = 10.0) -> float:
    """Jiang et al.'s "inverse-margin": ``1/γ²``, γ the ``percentile``-th percentile of the margins.

    Margins are ``output_margins`` of the model's outputs over all of ``data`` (training data in
    HU24 / Jiang et al.); the percentile uses linear interpolation between order statistics
    (``numpy.percentile``'s default). The low percentile, not the minimum, makes γ robust to a
    few outliers. If γ ≤ 0 (more than ``percentile`` % of the examples misclassified) the
    measure is ``inf``: the model does not separate its own training data.

    Args:
        model: maps a batch ``x`` to logits ``(B, C)``.
        data: an ``(x, y)`` pair of tensors, or a re-iterable of such batches (a DataLoader).
        percentile: in ``(0, 100)``.
    """
    _check_module(model)
    if not 0 < percentile < 100:
        raise ValueError(f"percentile must be in (0, 100), got {percentile!r}")
    device, _ = _reference(model)
    with _evaluating(model):
        margins = [output_margins(_forward(model, {}, x), y).to("cpu", torch.float64) for x, y in _pairs(data, device)]
    if not margins:
        raise ValueError("data must hold at least one (x, y) batch, got none")
    gamma = float(np.percentile(torch.cat(margins).numpy(), percentile))
    return 1.0 / gamma**2 if gamma > 0 else math.inf


# --------------------------------------------------------------------------- sharpness / flatness

def classification_error(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean 0-1 error of ``(B, C)`` logits; as ``loss_fn`` it gives Jiang et al.'s accuracy criterion."""
    return (logits.argmax(dim=1) != targets).to(torch.float64).mean()


def _mean_loss(model, parameters, loss_fn, data, device) -> float:
    total, count = 0.0, 0
    for x, y in _pairs(data, device):
        total += float(loss_fn(_forward(model, parameters, x), y)) * len(y)
        count += len(y)
    if count == 0:
        raise ValueError("data must hold at least one (x, y) example, got none")
    return total / count


@torch.no_grad()
def perturbation_sigma(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data,
    *,
    threshold: float = 0.1,
    noise: Literal["magnitude", "isotropic"] = "magnitude",
    magnitude_eps: float = 1e-3,
    num_samples: int = 5,
    search_steps: int = 20,
    sigma_range: tuple[float, float] = (1e-6, 10.0),
    seed: int = 0,
    select: Select | None = None,
) -> float:
    """The largest noise scale σ whose expected loss increase stays within ``threshold``.

    Jiang et al.'s PAC-Bayes flatness search: with weights w and Gaussian noise u(σ),

        σ* = max { σ : E_u[L(w + u(σ))] − L(w) ≤ threshold },

    ``noise="magnitude"`` ("pacbayes.mag.flatness", relative): u_i ~ N(0, σ² w_i² + ε²),
    ε = ``magnitude_eps``; ``noise="isotropic"`` ("pacbayes.flatness"): u_i ~ N(0, σ²).
    L is ``loss_fn(outputs, y)`` (a batch mean) averaged over ``data`` by example count;
    ``classification_error`` gives Jiang et al.'s criterion (accuracy drop ≤ 0.1), a
    cross-entropy gives a loss criterion. Pass the training data as an ``(x, y)`` pair or an
    unshuffled loader without random augmentation, so that every evaluation sees the same data.

    Search, deterministic: E_u is a mean over ``num_samples`` noise draws fixed by ``seed``
    (common random numbers: the same standard-normal draws are rescaled for every σ, so the
    estimate varies smoothly with σ); σ is bisected in log-space over ``sigma_range`` for
    ``search_steps`` steps and the largest σ found to satisfy the bound is returned. It is
    clipped to ``sigma_range``: the upper end if even that σ stays within the threshold, the
    lower end if even that one does not. The loss increase need not be monotone in σ; the search
    returns a crossing point.

    Args:
        model: evaluated in eval mode; its parameters are never modified.
        select: ``select(name, parameter) -> bool`` chooses the perturbed parameters; default
            every parameter, as in Jiang et al. (buffers are never perturbed).
    """
    _check_module(model)
    check_positive(threshold, "threshold")
    check_nonnegative(magnitude_eps, "magnitude_eps")
    check_choice(noise, "noise", ("magnitude", "isotropic"))
    for value, name in ((num_samples, "num_samples"), (search_steps, "search_steps")):
        check_int(value, name, minimum=1)
    if not (isinstance(sigma_range, (tuple, list)) and len(sigma_range) == 2):
        raise ValueError(f"sigma_range must be a (low, high) pair, got {sigma_range!r}")
    sigma_min, sigma_max = sigma_range
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ValueError(f"sigma_range must be (low, high) with 0 < low < high < inf, got {sigma_range!r}")

    device, _ = _reference(model)
    perturbed = {name: p.detach() for name, p in model.named_parameters() if select is None or select(name, p)}
    draws = torch.randint(2**62, (num_samples,), generator=torch.Generator().manual_seed(seed)).tolist()

    def noisy(sigma: float, draw: int) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(draw)
        out = {}
        for name, w in perturbed.items():
            z = torch.randn(w.shape, generator=generator, dtype=torch.float64).to(w.device, w.dtype)
            scale = torch.sqrt(sigma**2 * w**2 + magnitude_eps**2) if noise == "magnitude" else sigma
            out[name] = w + scale * z
        return out

    with _evaluating(model):
        base = _mean_loss(model, {}, loss_fn, data, device)

        def within(sigma: float) -> bool:
            losses = [_mean_loss(model, noisy(sigma, draw), loss_fn, data, device) for draw in draws]
            return float(np.mean(losses)) - base <= threshold

        if within(sigma_max):
            return float(sigma_max)
        if not within(sigma_min):
            return float(sigma_min)
        low, high = math.log(sigma_min), math.log(sigma_max)  # within(e^low) holds, within(e^high) fails
        for _ in range(search_steps):
            middle = (low + high) / 2
            low, high = (middle, high) if within(math.exp(middle)) else (low, middle)
        return math.exp(low)


def sharpness(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data,
    *,
    threshold: float = 0.1,
    noise: Literal["magnitude", "isotropic"] = "magnitude",
    magnitude_eps: float = 1e-3,
    num_samples: int = 5,
    search_steps: int = 20,
    sigma_range: tuple[float, float] = (1e-6, 10.0),
    seed: int = 0,
    select: Select | None = None,
) -> float:
    """PAC-Bayes sharpness, Jiang et al.'s "pacbayes.(mag.)flatness": ``1/σ*²``.

    σ* is ``perturbation_sigma`` (same arguments): the largest relative (``noise="magnitude"``,
    default) or absolute (``"isotropic"``) Gaussian weight noise that raises the loss on ``data``
    by at most ``threshold``. A sharper minimum tolerates less noise, so scores higher. The model's
    parameters and train/eval flags are unchanged afterwards.
    """
    sigma = perturbation_sigma(
        model, loss_fn, data, threshold=threshold, noise=noise, magnitude_eps=magnitude_eps,
        num_samples=num_samples, search_steps=search_steps, sigma_range=sigma_range, seed=seed, select=select,
    )
    return 1.0 / sigma**2
