"""``measure``: per-layer R, R^c, ΔR, sparsity and μ_SRR of a model over a data set (HU24 §5).

Details (equations, costs, conventions): ``docs/guide-measurement.md``, section ``srr/measurement/measure.py``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from srr._checks import check_eps, check_int, check_lam
from srr.measurement.subspaces import check_policy_subspaces, make_policy
from srr.measurement.table import SITES, Measurement, MeasurementRow, site_name
from srr.measurement.terms import SRRTerms, sample_terms, sparsity_counts, terms_from_parts
from srr.measurement.tokens import TokenCapture, as_sites, is_crate
from srr.rates import coding_rate, compressed_coding_rate, variational_compressed_coding_rate

__all__ = ["measure"]

_PARTS = SRRTerms._fields  # R, Rc, l0, l1, zero_fraction, srr


def _batches(data, batch_size: int) -> Iterable:
    if isinstance(data, Tensor):
        return data.split(batch_size)
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset) and not isinstance(data, DataLoader):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    if isinstance(data, Iterable):
        return data
    raise TypeError(f"data must be a DataLoader, a Dataset, an iterable of batches or a tensor of images, got "
                    f"{type(data).__name__}")


def _images(batch) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0], batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
    if isinstance(batch, dict) and isinstance(batch.get("image"), Tensor):
        return batch["image"], batch.get("label")
    raise TypeError(f"each batch must be images (B, C, H, W) or a tuple (images, labels, ...), got "
                    f"{type(batch).__name__}")


class _Accumulator:
    """Float64 running sums of every part, per (layer, site, module): one reduction per layer and batch."""

    def __init__(self):
        self.sums: dict[tuple[int, str, str], Tensor] = {}
        self.rc_var: dict[tuple[int, str, str], Tensor] = {}  # TSSA layers only (E12)
        self.count = 0

    def add(self, layer: int, sites: tuple[str, ...], module: str, parts: Tensor) -> None:
        """``parts (S, 6, B)``: the six :class:`SRRTerms` of each of the S sites, per sample."""
        sums = parts.sum(-1, dtype=torch.float64)  # (S, 6)
        for site, row in zip(sites, sums):
            key = (layer, site, module)
            self.sums[key] = self.sums[key] + row if key in self.sums else row

    def add_rc_var(self, layer: int, site: str, module: str, values: Tensor) -> None:
        key, total = (layer, site, module), values.double().sum()
        self.rc_var[key] = self.rc_var[key] + total if key in self.rc_var else total

    def rows(self) -> list[MeasurementRow]:
        rows = []
        for key, sums in self.sums.items():
            layer, site, module = key
            v = dict(zip(_PARTS, (sums / self.count).tolist()))
            if any(math.isnan(x) or math.isinf(x) for x in v.values()):
                raise ValueError(f"tokens of layer {layer} ({site}, {module}) were not finite (NaN/Inf values): "
                                 f"no rate can be measured; check the model and the data")
            rows.append(MeasurementRow(layer=layer, site=site, module=module, R=v["R"], Rc=v["Rc"],
                                       dR=v["R"] - v["Rc"], zero_fraction=v["zero_fraction"], l0=v["l0"],
                                       l1=v["l1"], srr=v["srr"],
                                       Rc_var=float(self.rc_var[key] / self.count) if key in self.rc_var else None))
        return rows


def _measure_crate(model, x, acc: _Accumulator, *, eps, lam, names, sites) -> None:
    """Every layer's sites from one ``forward_layer_tokens`` pass, each token set read in place (no stacking).

    R (E1), ‖Z‖₀ and ‖Z‖₁ depend on the token set alone: they are computed once per distinct set
    (Z^{ℓ+1} is also layer ℓ+1's ``in``); R^c (E2) once per site, with the layer's own U^ℓ.
    """
    _, layers = model.forward_layer_tokens(x)
    blocks = model.blocks()
    known: dict[int, tuple[Tensor, Tensor, Tensor]] = {}  # id(Z) -> (R, ‖Z‖₀, ‖Z‖₁), each (B,)
    for ell, (tokens, block) in enumerate(zip(layers, blocks)):
        U = block.subspaces.detach()
        by_site = {"in": tokens.input, "half": tokens.half, "out": tokens.output}
        Zs = [by_site[site] for site in sites]
        parts = []
        for Z in Zs:
            if id(Z) not in known:
                R = coding_rate(Z, eps, check_finite=False)  # (B,)
                known[id(Z)] = (R, *sparsity_counts(Z, R.dtype))
            R, l0, l1 = known[id(Z)]
            Rc = compressed_coding_rate(Z, U, eps, check_finite=False)  # (B,)
            parts.append(torch.stack(terms_from_parts(R, Rc, l0, l1, size=Z.shape[-2] * Z.shape[-1], lam=lam)))
        acc.add(ell, sites, names[ell], torch.stack(parts))  # (S, 6, B)
        membership = getattr(block.compression, "membership", None)
        if membership is not None:  # TSSA: its own objective, with the layer's membership Π held fixed
            Pi = membership(tokens.mssa_input)  # (B, N, K)
            for site, Z in zip(sites, Zs):
                acc.add_rc_var(ell, site, names[ell], variational_compressed_coding_rate(Z, U, Pi, eps))
        known = {id(tokens.output): known[id(tokens.output)]} if id(tokens.output) in known else {}


def measure(model: nn.Module, data, *, eps: float = 0.1, lam: float = 0.1, layers=None, subspaces="model",
            sites: tuple[str, ...] = SITES,
            batch_size: int = 256, limit: int | None = None, device: torch.device | str | None = None,
            autocast: torch.dtype | None = None, progress: bool = True) -> Measurement:
    """Per-layer μ_SRR and its parts over ``data``, as a :class:`~srr.measurement.table.Measurement`.

    - ``data``: a DataLoader or iterable of batches (images, or ``(images, labels, ...)``), a Dataset
      (batched by ``batch_size``) or a tensor of images.
    - ``eps`` ε, ``lam`` λ of (E4); ``limit``: stop after this many samples.
    - ``sites`` (CRATE): which of ``"in"`` (Z^ℓ; formerly ``"mssa_in"``), ``"half"``, ``"out"`` to measure; each costs a
      projection ``Z U^ℓ`` (N·d·Kp multiply-adds per image), about a third of the layer itself.
    - ``layers`` / ``subspaces``: for models other than CRATE (see the module docstring); for a
      CRATE model ``layers=None`` and ``subspaces="model"`` (its own U^ℓ).
    - ``autocast``: a dtype to run the model's forward under ``torch.autocast`` (rates stay in float32).
    - ``progress``: a rich progress bar.

    Values stay on the device until the end (no per-batch host synchronisation); non-finite
    tokens raise a ValueError naming the layer when the table is assembled.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    eps = check_eps(eps)
    lam = check_lam(lam)
    if limit is not None:
        check_int(limit, "limit", minimum=1, what="None or a number of samples")
    if device is None:
        device = next(model.parameters()).device
    crate = is_crate(model) and layers is None and isinstance(subspaces, str) and subspaces == "model"
    if isinstance(sites, str):
        sites = (sites,)
    sites = tuple(site_name(s) if isinstance(s, str) else s for s in sites)
    if not sites or any(s not in SITES for s in sites) or len(set(sites)) != len(sites):
        raise ValueError(f"sites must be distinct names among {SITES}, got {sites!r}")
    sites = tuple(s for s in SITES if s in sites)  # forward order
    names = {id(m): n for n, m in model.named_modules()}
    acc = _Accumulator()
    capture = policy = None
    if crate:
        crate_names = [names[id(b)] for b in model.blocks()]
    else:
        token_sites = as_sites(model, layers)
        modules = dict(model.named_modules())
        policy = make_policy(subspaces, model)
        policy.bind(model, [modules[s.module] for s in token_sites])
        capture = TokenCapture(model, token_sites, detach=True)
    batches = _batches(data, batch_size)
    total = len(batches) if hasattr(batches, "__len__") else None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _progress(progress, total) as advance:
            for batch in batches:
                x, y = _images(batch)
                if limit is not None:
                    x, y = x[: limit - acc.count], (y[: limit - acc.count] if y is not None else None)
                x = x.to(device, non_blocking=True)
                with torch.autocast(torch.device(device).type, dtype=autocast, enabled=autocast is not None):
                    if crate:
                        _measure_crate(model, x, acc, eps=eps, lam=lam, names=crate_names, sites=sites)
                    else:
                        capture.clear()
                        model(x)
                if not crate:
                    tokens = [capture.tokens[s.label] for s in token_sites]
                    if policy.needs_fit:
                        policy.fit(tokens, y)
                    for i, (site, Z) in enumerate(zip(token_sites, tokens)):
                        U = check_policy_subspaces(policy.subspaces(i), Z.shape[-1], site.label).detach()
                        acc.add(i, ("out",), site.label, torch.stack(sample_terms(Z, U, eps=eps, lam=lam))[None])
                acc.count += len(x)
                advance()
                if limit is not None and acc.count >= limit:
                    break
    finally:
        model.train(was_training)
        if capture is not None:
            capture.close()
    if acc.count == 0:
        raise ValueError("data yielded no samples to measure")
    info = {"model": type(model).__name__ if getattr(getattr(model, "config", None), "name", None) is None
            else model.config.name, "samples": acc.count, "eps": eps, "lam": lam, "scope": "sample",
            "subspaces": "model" if crate else type(policy).__name__}
    return Measurement(acc.rows(), info=info)


class _progress:
    """A rich progress bar (or nothing): ``with _progress(on, total) as advance: advance()``."""

    def __init__(self, enabled: bool, total: int | None):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.__enter__()
        task = self.bar.add_task("measuring SRR", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
