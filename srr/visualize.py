"""Attention maps of CRATE's softmax layers (E8) and the PCA of patch features: the emergence figures of
YU23 (segmentation from supervised training). Layers are numbered from 0, as everywhere in srr.

``attention(model, images, layer=ℓ)``: each head's attention of the CLS token over the patches,
``softmax(τ A_k A_kᵀ)[0, 1:]`` with ``A_k = LN₁(Z^ℓ) U_k``, from the model's own weights; the fused
forward pass is untouched (the maps are computed only here). ``plot_attention`` draws the grid.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from srr.layers import MSSA


def _layer_index(model: nn.Module, layer: int) -> int:
    depth = len(model.blocks())
    if isinstance(layer, bool) or not isinstance(layer, int) or not -depth <= layer < depth:
        raise ValueError(f"layer must be an integer in [0, {depth - 1}] (or negative, from the end), got {layer!r}")
    return layer % depth


@torch.no_grad()
def layer_inputs(model: nn.Module, images: Tensor, layer: int) -> tuple[Tensor, Tensor]:
    """``(Z^ℓ, Z^{ℓ+1})``, each ``(B, N, d)``, in eval mode (no dropout)."""
    index = _layer_index(model, layer)
    was_training = model.training
    model.eval()
    try:
        z = model.embed(images)  # (B, N, d)
        for block in model.blocks()[:index]:
            z = block(z)
        return z, model.blocks()[index](z)
    finally:
        model.train(was_training)


@torch.no_grad()
def attention(model: nn.Module, images: Tensor, *, layer: int = -1, full: bool = False) -> Tensor:
    """CLS attention over the patches, ``(B, K, num_patches)`` (``full=True``: every head's whole map,
    ``(B, K, N, N)`` with N = 1 + num_patches), of layer ``layer`` (0-based; -1: the last).

    For the softmax variants (``crate``, ``crate_c``, ``crate_n``, ``crate_t``, ``crate_fix``,
    ``crate_identity``, ``crate_alpha``); the others have no attention matrix (a ValueError says so).
    """
    index = _layer_index(model, layer)
    block = model.blocks()[index]
    if not isinstance(block.compression, MSSA):
        raise ValueError(f"variant {model.config.variant!r} has no softmax attention to show (its compression "
                         f"layer is {type(block.compression).__name__}); use a softmax variant such as 'crate'")
    z, _ = layer_inputs(model, images, index)
    maps = block.compression.attention(block[0].norm(z))  # (B, K, N, N)
    return maps if full else maps[:, :, 0, 1:]


def patch_pca(features: Tensor, components: int = 3) -> Tensor:
    """The first ``components`` principal components of the patch tokens of all images together,
    ``(B, n, d) -> (B, n, components)``, each scaled to [0, 1] (shown as RGB)."""
    B, n, d = features.shape
    x = features.reshape(B * n, d).double()
    x = x - x.mean(dim=0)
    _, _, V = torch.linalg.svd(x, full_matrices=False)  # V: (min(Bn, d), d)
    pcs = x @ V[:components].T  # (B·n, c)
    lo, hi = pcs.min(dim=0).values, pcs.max(dim=0).values
    pcs = (pcs - lo) / (hi - lo).clamp_min(1e-12)
    return pcs.reshape(B, n, -1).float()


def plot_attention(model: nn.Module, images: Tensor, path: str | Path, *, layer: int = -1,
                   title: str | None = None, row_labels: list[str] | None = None) -> Path:
    """A PNG grid, one row per image: the image, each head's CLS attention overlaid (one colour scale,
    with its bar), and the PCA of the layer's output patch features (the first three principal components
    of the patch tokens, as red, green, blue: patches of similar features get similar colours).
    ``row_labels`` (e.g. true and predicted class) name the rows. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = _layer_index(model, layer)
    cfg = model.config
    grid = cfg.image_size // cfg.patch_size
    maps = attention(model, images, layer=index).cpu()  # (B, K, n)
    _, out = layer_inputs(model, images, index)
    pca = patch_pca(out[:, 1:].cpu())  # (B, n, 3)
    B, K, _ = maps.shape
    vmax = maps.max().item()
    fig, axes = plt.subplots(B, K + 2, figsize=(1.9 * (K + 2) + 0.8, 1.9 * B + 0.9), squeeze=False)
    shown = None
    for i in range(B):
        picture = _displayable(images[i].cpu()).numpy()  # (H, W, C) in [0, 1]
        axes[i, 0].imshow(picture, cmap="gray" if picture.shape[-1] == 1 else None)
        axes[i, 0].set_ylabel(row_labels[i] if row_labels else f"image {i}", fontsize=8)
        for k in range(K):
            heat = maps[i, k].reshape(grid, grid).numpy()
            axes[i, k + 1].imshow(picture.mean(-1), cmap="gray", extent=(0, grid, grid, 0))
            shown = axes[i, k + 1].imshow(heat, cmap="inferno", alpha=0.65, vmin=0.0, vmax=vmax,
                                          extent=(0, grid, grid, 0))
        axes[i, K + 1].imshow(pca[i].reshape(grid, grid, -1).numpy(), extent=(0, grid, grid, 0))
    for k in range(K):
        axes[0, k + 1].set_title(f"head {k}")
    axes[0, 0].set_title("image")
    axes[0, K + 1].set_title("PCA of patches\n(3 components = RGB)", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"{cfg.name or 'CRATE'} ({cfg.variant}): CLS attention per head, layer {index} "
                          f"(0-based, of {len(model.blocks())})")
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    bar = fig.add_axes((0.93, 0.15, 0.015, 0.7))
    fig.colorbar(shown, cax=bar, label="attention of the CLS token")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _displayable(image: Tensor) -> Tensor:
    """``(C, H, W)`` normalised image -> ``(H, W, C)`` in [0, 1] (min-max, whatever the normalisation)."""
    lo, hi = image.min(), image.max()
    image = (image - lo) / max((hi - lo).item(), 1e-12)
    return image.permute(1, 2, 0)


__all__ = ["attention", "patch_pca", "plot_attention", "layer_inputs"]
