"""Token sets read from any model by forward hooks, without touching the model's code.

A :class:`TokenSite` names a module (dotted path, as in ``model.named_modules()``) and whether
its input or output is read. The captured value becomes a token set ``(B, N, d)`` (rows are
tokens, MATH.md §1):

- ``(B, N, d)`` sequences (ViT blocks, CRATE blocks) are used as they are (CLS token included);
- ``(B, C, H, W)`` feature maps (ResNet stages) become ``(B, H·W, C)``: each position a token;
- ``(B, d)`` features (pooled outputs) become ``(B, 1, d)``.

``default_sites(model)`` knows where the layers of a CRATE model, a torchvision or timm
VisionTransformer and a torchvision ResNet are; any other model needs explicit sites.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from einops import rearrange
from torch import Tensor, nn

__all__ = ["TokenCapture", "TokenSite", "as_sites", "default_sites", "is_crate", "to_tokens"]

Where = Literal["input", "output"]


@dataclass(frozen=True)
class TokenSite:
    """Where one token set is read: ``module`` (dotted name), its ``input`` or ``output``."""

    module: str
    where: Where = "output"
    name: str | None = None  # label in tables; default: the module name

    def __post_init__(self):
        if not isinstance(self.module, str):
            raise TypeError(f"module must be a dotted module name (str), got {type(self.module).__name__}")
        if self.where not in ("input", "output"):
            raise ValueError(f"where must be 'input' or 'output', got {self.where!r}")

    @property
    def label(self) -> str:
        return self.name or self.module or "<model>"


def to_tokens(value: Tensor) -> Tensor:
    """A captured tensor as a token set: ``(B, N, d)`` as is, ``(B, C, H, W) -> (B, H·W, C)``,
    ``(B, d) -> (B, 1, d)``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"a token site must produce a torch.Tensor, got {type(value).__name__}")
    if value.ndim == 3:
        return value
    if value.ndim == 4:
        return rearrange(value, "b c h w -> b (h w) c")
    if value.ndim == 2:
        return value.unsqueeze(1)
    raise ValueError(f"a token site must produce (B, N, d), (B, C, H, W) or (B, d) tensors, got shape "
                     f"{tuple(value.shape)}")


def is_crate(model: nn.Module) -> bool:
    """A CRATE model in the sense of ``srr.models``: ``blocks()``, ``forward_layer_tokens``, ``layer_subspaces()``."""
    return all(callable(getattr(model, a, None)) for a in ("blocks", "forward_layer_tokens", "layer_subspaces"))


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


def default_sites(model: nn.Module) -> list[TokenSite]:
    """The output of every layer of a model whose layout is known; a ValueError otherwise.

    CRATE: ``transformer.layers.{ℓ}`` (Z^{ℓ+1}); torchvision ViT: ``encoder.layers.encoder_layer_{i}``;
    timm ViT: ``blocks.{i}``; torchvision ResNet: ``layer1`` … ``layer4`` (feature maps).
    """
    if is_crate(model):
        names = _module_names(model)
        return [TokenSite(names[id(b)]) for b in model.blocks()]
    encoder = getattr(model, "encoder", None)
    if encoder is not None and isinstance(getattr(encoder, "layers", None), nn.Sequential):
        return [TokenSite(f"encoder.layers.{n}") for n, _ in encoder.layers.named_children()]
    if isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList)):
        return [TokenSite(f"blocks.{n}") for n, _ in model.blocks.named_children()]
    stages = [f"layer{i}" for i in range(1, 5) if isinstance(getattr(model, f"layer{i}", None), nn.Module)]
    if stages:
        return [TokenSite(s) for s in stages]
    raise ValueError(f"no default token sites for a {type(model).__name__}; pass sites, e.g. "
                     f"layers=['encoder.block3'] or [TokenSite('encoder.block3', where='output')]")


def as_sites(model: nn.Module, layers) -> list[TokenSite]:
    """Resolve ``layers``: None (all default sites), an int / ints (indices into the default
    sites, negative allowed), module names, :class:`TokenSite` values, or a mix."""
    if layers is None:
        return default_sites(model)
    if isinstance(layers, (int, str, TokenSite)) and not isinstance(layers, bool):
        layers = [layers]
    if not isinstance(layers, Sequence) or isinstance(layers, str) or not layers:
        raise ValueError(f"layers must be None, an int, a module name, a TokenSite or a non-empty list of them, got "
                         f"{layers!r}")
    modules = dict(model.named_modules())
    defaults = None
    sites = []
    for item in layers:
        if isinstance(item, bool) or not isinstance(item, (int, str, TokenSite)):
            raise TypeError(f"layers entries must be int, str or TokenSite, got {type(item).__name__} {item!r}")
        if isinstance(item, int):
            defaults = defaults if defaults is not None else default_sites(model)
            if not -len(defaults) <= item < len(defaults):
                raise ValueError(f"layer index {item} out of range for a model with {len(defaults)} layers")
            item = defaults[item]
        elif isinstance(item, str):
            item = TokenSite(item)
        if item.module not in modules:
            raise ValueError(f"no module named {item.module!r} in {type(model).__name__}; "
                             f"some names: {[n for n in list(modules)[1:8]]}")
        sites.append(item)
    labels = [s.label for s in sites]
    if len(set(labels)) != len(labels):
        raise ValueError(f"layers must name distinct sites, got {labels}")
    return sites


class TokenCapture:
    """Forward hooks that keep the token set of each site during a forward pass.

    ``with TokenCapture(model, sites) as cap: model(x); cap.tokens[label] -> (B, N, d)``.
    Hooks are removed on ``close()`` / leaving the ``with`` block. ``detach=True`` stores
    detached tensors (measurement); otherwise they stay in the autograd graph.
    """

    def __init__(self, model: nn.Module, sites: Sequence[TokenSite], *, detach: bool = False):
        self.sites = list(sites)
        self.detach = detach
        self.tokens: dict[str, Tensor] = {}
        modules = dict(model.named_modules())
        self._handles = []
        for site in self.sites:
            module = modules[site.module]
            if site.where == "input":
                self._handles.append(module.register_forward_pre_hook(self._input_hook(site.label)))
            else:
                self._handles.append(module.register_forward_hook(self._output_hook(site.label)))

    def _store(self, label: str, value) -> None:
        tokens = to_tokens(value)
        self.tokens[label] = tokens.detach() if self.detach else tokens

    def _input_hook(self, label: str):
        def hook(module, args):
            self._store(label, args[0])
        return hook

    def _output_hook(self, label: str):
        def hook(module, args, output):
            self._store(label, output)
        return hook

    def clear(self) -> None:
        self.tokens = {}

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.tokens = {}

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "TokenCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
