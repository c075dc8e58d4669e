"""The run's two uses of sparse rate reduction, through ``srr.measure``:

- the regulariser (HU24 §6, MATH.md §6): ``η_reg · mean_{ℓ∈S} μ_SRR(f_ℓ(detach Z^{ℓ−1}))`` added to
  the cross-entropy, on the global batch under DDP;
- the measurement (HU24 §5, E4): μ_SRR of every layer on a fixed probe set, once per epoch
  (the :class:`srr.train.callbacks.SRRMeasurement` callback calls it).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig, parse_layers


def build_regularizer(model: nn.Module, config: TrainConfig):
    """An ``srr.measurement.SRRRegularizer`` hooked into ``model`` (None when ``srr_weight == 0``)."""
    if config.srr_weight == 0:
        return None
    from srr.measurement import SRRRegularizer

    layers = parse_layers(config.srr_layers)
    layers = {"last": -1, "all": None}.get(layers, layers) if isinstance(layers, str) else layers
    return SRRRegularizer(model, layers=layers, weight=config.srr_weight, eps=config.srr_eps, lam=config.srr_lam)


@torch.no_grad()
def measure_layers(model: nn.Module, images: torch.Tensor, *, eps: float, lam: float,
                   device: torch.device) -> list[float]:
    """μ_SRR of each layer's output of ``model`` on ``images`` ``(n, C, H, W)``, in layer order."""
    from srr.measurement import measure

    table = measure(model, images, eps=eps, lam=lam, device=device, progress=False)
    return [float(v) for v in table.column("srr", "out")]
