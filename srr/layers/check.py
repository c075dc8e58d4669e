"""``check``: a fast layer against its reference, in float64, forward and backward.

Every layer of ``srr.layers`` has a ``reference(x)`` method computing the same map the slow way
(the derived step of ``srr.derive`` where one exists). ``check`` draws fresh random inputs and a
random cotangent, runs both on copies of the layer that share parameter values, and reports the
relative error ``‖fast − ref‖_F / ‖ref‖_F`` of the outputs and of the gradients with respect to the
input and to every parameter. The reference always runs in float64; ``dtype`` is the fast path's.
Both copies run in ``eval()`` mode (dropout off).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn


def relative_error(fast: Tensor | None, ref: Tensor | None) -> float:
    """``‖fast − ref‖_F / ‖ref‖_F`` in float64 (absolute when ``ref`` is 0; ``None`` counts as zeros)."""
    if fast is None and ref is None:
        return 0.0
    if fast is None or ref is None:
        other = ref if fast is None else fast
        fast, ref = (torch.zeros_like(other), other) if fast is None else (other, torch.zeros_like(other))
    fast, ref = fast.detach().double(), ref.detach().double()
    den = ref.norm()
    return float((fast - ref).norm() / den) if den > 0 else float((fast - ref).norm())


@dataclass(frozen=True)
class CheckReport:
    """Relative errors of a fast layer against its reference (see :func:`check`)."""

    layer: str
    dtype: torch.dtype
    output: float
    input_grad: float
    param_grads: dict[str, float] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max([self.output, self.input_grad, *self.param_grads.values()])

    def ok(self, tol: float) -> bool:
        return self.max_error <= tol

    def __str__(self) -> str:
        lines = [f"check {self.layer} ({str(self.dtype).replace('torch.', '')} vs float64 reference): "
                 f"max relative error {self.max_error:.2e}",
                 f"  output: {self.output:.2e}", f"  d/d input: {self.input_grad:.2e}"]
        lines += [f"  d/d {name}: {err:.2e}" for name, err in self.param_grads.items()]
        return "\n".join(lines)


def _run(module: nn.Module, fn, x: Tensor):
    """Output and a closure computing gradients of ``⟨out, cotangent⟩`` w.r.t. the input and parameters."""
    x = x.detach().requires_grad_()
    out = fn(module, x)
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]

    def grads(cotangent: Tensor):
        g = torch.autograd.grad((out * cotangent.to(out.dtype)).sum(), [x, *(p for _, p in named)], allow_unused=True)
        return g[0], {n: gi for (n, _), gi in zip(named, g[1:])}

    return out, grads


def check(layer: nn.Module, reference: Callable[[nn.Module, Tensor], Tensor] | None = None, *,
          batch: int = 2, tokens: int = 9, dtype: torch.dtype = torch.float64, seed: int = 0,
          scale: float = 1.0, x: Tensor | None = None) -> CheckReport:
    """Compare ``layer(x)`` with ``reference(layer, x)`` (default: ``layer.reference(x)``).

    Inputs ``x (batch, tokens, layer.dim)`` are ``scale·N(0, 1)`` drawn from ``seed`` (or given);
    the fast copy runs in ``dtype`` on the layer's device, the reference in float64 with the same
    parameter values. Returns a :class:`CheckReport` (``report.ok(tol)``, ``print(report)``).
    """
    if reference is None:
        if not hasattr(layer, "reference"):
            raise TypeError(f"{type(layer).__name__} has no reference(x) method: pass reference=(module, x) -> output")
        reference = lambda module, inp: module.reference(inp)  # noqa: E731
    param = next(layer.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    fast = copy.deepcopy(layer).to(dtype).eval()
    ref = copy.deepcopy(fast).to(torch.float64).eval()
    gen = torch.Generator().manual_seed(seed)
    if x is None:
        x = scale * torch.randn(batch, tokens, layer.dim, generator=gen, dtype=torch.float64)
    x64 = x.detach().to(device=device, dtype=torch.float64)
    out_ref, ref_grads = _run(ref, reference, x64)
    out, fast_grads = _run(fast, lambda m, inp: m(inp), x64.to(dtype))
    if out.shape != out_ref.shape:
        raise ValueError(f"the layer's output {tuple(out.shape)} and its reference's "
                         f"{tuple(out_ref.shape)} differ in shape")
    cotangent = torch.randn(out_ref.shape, generator=gen, dtype=torch.float64).to(device)
    gx_ref, gp_ref = ref_grads(cotangent)
    gx, gp = fast_grads(cotangent)
    return CheckReport(
        layer=type(layer).__name__ + (f"[{layer.extra_repr()}]" if layer.extra_repr() else ""),
        dtype=dtype,
        output=relative_error(out, out_ref),
        input_grad=relative_error(gx, gx_ref),
        param_grads={n: relative_error(gp[n], gp_ref[n]) for n in gp_ref},
    )
