"""CIFAR-10 for the experiments: the data, the model family, and every layer's rates in two conventions.

The data is read through ``srr.data`` (decoded once into a cached uint8 tensor) from
``--data-dir`` (default ``$SRR_DATA_DIR``, else ``../shared/data/cifar10`` beside the repository).
The models are ``crate_micro``-shaped (32 px; patch 4: 64 patches + CLS = 65 tokens per image;
patch 8: 17 tokens, the fewest on which a rate is not saturated, MATH.md §5b).

Per layer ℓ (0-based) :func:`layer_stats` records, averaged over images (each image's 65 tokens
are one token set, the papers' form):

- **raw** (HU24 §5, "LayerNorm removed"): R (E1) and R^c (E2) of the layer output Z^{ℓ+1} with the
  layer's own subspaces U^ℓ, at every ε in ``eps`` (so other ε are re-scored without retraining),
  also R^c of the block input Z^ℓ and of Z^{ℓ+½} (does the MSSA half-step lower R^c?);
  ‖Z^{ℓ+1}‖₀ as a raw count per image and the fraction of zeros;
- **yu23** (YU23's figures, MATH.md §5c): R^c of the MSSA input LN₁(Z^ℓ) projected by U^ℓ with each
  head's token vectors unit-normalised and ε² = 0.01 (:func:`srr.crate_vis_compressed_coding_rate`),
  and LN₁ applied to Z^{ℓ+½};
- **tost** layers also: R^c_var (E12) of Z^ℓ and Z^{ℓ+½} with the layer's own membership Π (held fixed),
  does the TSSA half-step lower its own objective?
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor

import srr
from srr.data import load_dataset
from srr.models import create_model

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "cifar10"
IMAGE_SIZE, PATCH_SIZE = 32, 4
TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2 + 1  # 65


def data_dir(arg: str | os.PathLike | None) -> Path:
    """``--data-dir``, else ``$SRR_DATA_DIR``, else ``../shared/data/cifar10``."""
    if arg is not None:
        return Path(arg)
    return Path(os.environ["SRR_DATA_DIR"]) if os.environ.get("SRR_DATA_DIR") else DEFAULT_DATA_DIR


def load(split: str, root: Path, *, subset: int | None = None, augment: bool = False):
    """The in-memory dataset of a CIFAR-10 split; ``subset``: its first ``subset`` images of a fixed
    class-balanced random order (seed 0, the same for every model)."""
    dataset = load_dataset("cifar10", split=split, data_dir=root, augment=augment)
    if subset is not None and subset < len(dataset):
        images, labels = dataset.tensors
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        per_class = subset // 10
        keep = torch.cat([order[labels[order] == c][:per_class] for c in range(10)]).sort().values
        dataset.tensors = (images[keep], labels[keep])
    return dataset


def job_data(job: dict, *, augment: bool):
    """``(train dataset, (X, y) train, (X, y) test)`` of an experiment job, tensors on ``job["device"]``:
    ``job["data_dir"]``, optional ``train_subset`` / ``test_subset``; ``augment``: the training split's
    crop + flip (apply it with ``dataset.augment_batch``)."""
    device = torch.device(job["device"])
    root = Path(job["data_dir"])
    train_set = load("train", root, subset=job.get("train_subset"), augment=augment)
    test_set = load("test", root, subset=job.get("test_subset"))
    train = tuple(t.to(device) for t in train_set.tensors)
    test = tuple(t.to(device) for t in test_set.tensors)
    return train_set, train, test


def model(variant: str, *, width: int, depth: int, heads: int = 4, dropout: float = 0.0, patch_size: int = PATCH_SIZE,
          **overrides):
    """A ``crate_micro``-shaped CRATE: width d, ``heads`` heads of d/heads, (32/patch)² + 1 tokens per image
    (65 at patch 4, 17 at patch 8).

    ``dropout`` goes to HU24's three places: after the position embedding, on the attention
    weights and after the attention output.
    """
    return create_model("crate_micro", variant=variant, dim=width, heads=heads, head_dim=width // heads,
                        depth=depth, dropout=dropout, emb_dropout=dropout, patch_size=patch_size, **overrides)


def eps_values(head_dim: int, tokens: int = TOKENS) -> dict[str, float]:
    """The ε at which rates are saved: 0.1 (HU24), ε² = p/N, and 1."""
    return {"0.1": 0.1, "p/N": math.sqrt(head_dim / tokens), "1": 1.0}


@torch.no_grad()
def layer_stats(net, images: Tensor, *, batch_size: int = 256) -> list[dict]:
    """Every layer's rates and sparsity on ``images``, in both conventions (see the module doc)."""
    was = net.training
    net.eval()
    p = net.config.head_dim
    eps = eps_values(p, net.config.num_patches + 1)
    sums: dict[int, dict[str, float]] = {}
    for xb in images.split(batch_size):
        _, layers = net.forward_layer_tokens(xb)
        for ell, (t, block) in enumerate(zip(layers, net.blocks())):
            U = block.subspaces.detach()
            out, row = t.output.double(), sums.setdefault(ell, {})
            parts = {}
            for tag, e in eps.items():
                parts[f"R[{tag}]"] = srr.coding_rate(out, e)
                parts[f"Rc[{tag}]"] = srr.compressed_coding_rate(out, U.double(), e)
            parts["Rc_in[0.1]"] = srr.compressed_coding_rate(t.input.double(), U.double(), 0.1)
            parts["Rc_half[0.1]"] = srr.compressed_coding_rate(t.half.double(), U.double(), 0.1)
            parts["l0"] = (out != 0).sum((-2, -1)).double()
            parts["zero_fraction"] = (out == 0).double().mean((-2, -1))
            parts["Rc_yu23_in"] = srr.crate_vis_compressed_coding_rate(t.mssa_input.double(), U.double(), 0.01)
            parts["Rc_yu23_half"] = srr.crate_vis_compressed_coding_rate(
                block[0].norm(t.half).double(), U.double(), 0.01)
            if hasattr(block.compression, "membership"):  # TSSA (tost): its own objective, Π held fixed (E12)
                Pi = block.compression.membership(t.mssa_input).double()
                parts["Rcvar_in[0.1]"] = srr.variational_compressed_coding_rate(t.input.double(), U.double(), Pi, 0.1)
                parts["Rcvar_half[0.1]"] = srr.variational_compressed_coding_rate(t.half.double(), U.double(), Pi, 0.1)
            for k, v in parts.items():
                row[k] = row.get(k, 0.0) + float(v.sum())
    net.train(was)
    n = len(images)
    rows = []
    for ell in sorted(sums):
        row = {"layer": ell, **{k: v / n for k, v in sums[ell].items()}}
        for tag in eps:
            row[f"srr[{tag}]"] = 0.1 * row["l0"] + row[f"Rc[{tag}]"] - row[f"R[{tag}]"]  # (E4), λ = 0.1
        rows.append(row)
    return rows


def model_srr(rows: list[dict], *, eps: str = "0.1", lam: float = 0.1) -> float:
    """HU24 eq. 11: μ_SRR averaged over all layers' outputs, re-scored at any saved ε and any λ."""
    return sum(lam * r["l0"] + r[f"Rc[{eps}]"] - r[f"R[{eps}]"] for r in rows) / len(rows)
