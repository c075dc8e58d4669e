"""One CRATE layer (MATH.md §4.1–4.2): a compression half-step, then a sparsification step.

    Z^{ℓ+½} = Z^ℓ + C(LN₁(Z^ℓ))              C: the compression update (MSSA, E8–E9; ExactCompression, E6; TSSA, E13)
    Z^{ℓ+1} = S(LN₂(Z^{ℓ+½}))                S: one ISTA step (E10), no residual, so Z^{ℓ+1} ≥ 0
    Z^{ℓ+1} = Z^{ℓ+½} + S(LN₂(Z^{ℓ+½}))      crate_alpha: S = D₁A₂, overcomplete ISTA with residual

State-dict keys are the public code's; hook points: ``docs/guide-layers.md``, section ``srr/models/blocks.py``.
"""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from srr.layers import MSSA
from srr.models.config import CRATEConfig
from srr.models.drop_path import drop_path
from srr.models.variants import REGISTRY


class LayerTokens(NamedTuple):
    """The tokens of one layer ℓ, each ``(B, N, d)`` (N counts the CLS token)."""

    input: Tensor  # Z^ℓ
    mssa_input: Tensor  # LN₁(Z^ℓ), what the compression layer sees
    half: Tensor  # Z^{ℓ+½}
    ista_input: Tensor  # LN₂(Z^{ℓ+½}), what the sparsification layer sees
    output: Tensor  # Z^{ℓ+1}


class PreNorm(nn.Module):
    """``fn(LayerNorm(x))``, as in the public code (keys ``norm.*``, ``fn.*``)."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x))


class CRATEBlock(nn.ModuleList):
    """``[PreNorm(compression), PreNorm(sparsification)]`` with the forward of one CRATE layer.

    ``sparsification_residual``: add the sparsification output to Z^{ℓ+½} (CRATE-α) instead
    of replacing it (CRATE). ``drop_path`` applies to residual branches only: ISTA without a
    residual has no branch to drop.
    """

    def __init__(self, compression: nn.Module, sparsification: nn.Module, *, dim: int,
                 sparsification_residual: bool = False, drop_path: float = 0.0):
        super().__init__([PreNorm(dim, compression), PreNorm(dim, sparsification)])
        self.sparsification_residual = bool(sparsification_residual)
        self.drop_path = float(drop_path)

    @property
    def compression(self) -> nn.Module:
        return self[0].fn

    @property
    def sparsification(self) -> nn.Module:
        return self[1].fn

    @property
    def subspaces(self) -> Tensor:
        """U^ℓ, ``(K, d, p)``: the subspaces the compression step uses."""
        return self.compression.subspaces

    @property
    def dictionary(self) -> Tensor:
        """D^ℓ, ``(d, d)`` (``(d, m)`` for CRATE-α): the sparsification dictionary."""
        return self.sparsification.dictionary

    def tokens(self, z: Tensor) -> LayerTokens:
        """One layer, keeping every intermediate (references, no copies)."""
        mssa_input = self[0].norm(z)  # (B, N, d)
        compression = self[0].fn
        if isinstance(compression, MSSA) and not (self.training and self.drop_path > 0):
            half = compression.add_update(z, mssa_input)  # (B, N, d), the residual fused into the output map
        else:
            half = z + drop_path(compression(mssa_input), self.drop_path, self.training)  # (B, N, d)
        ista_input = self[1].norm(half)  # (B, N, d)
        out = self[1].fn(ista_input)  # (B, N, d)
        if self.sparsification_residual:
            out = half + drop_path(out, self.drop_path, self.training)
        return LayerTokens(z, mssa_input, half, ista_input, out)

    def forward(self, z: Tensor) -> Tensor:  # (B, N, d) -> (B, N, d)
        return self.tokens(z).output

    # nn.ModuleList.__repr__ hides the attributes above; show them.
    def extra_repr(self) -> str:
        return f"sparsification_residual={self.sparsification_residual}, drop_path={self.drop_path}"


def build_block(cfg: CRATEConfig, *, drop_path: float = 0.0) -> CRATEBlock:
    """The layer of ``cfg.variant``, as its entry of :data:`srr.models.variants.REGISTRY` builds it."""
    variant = REGISTRY[cfg.variant]
    return CRATEBlock(variant.compression(cfg), variant.sparsification(cfg), dim=cfg.dim,
                      sparsification_residual=variant.sparsification_residual, drop_path=drop_path)
