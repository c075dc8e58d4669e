"""Where the subspaces U (K, d, p) of a layer's R^c (E2) come from: subspace policies.

Details (equations, costs, conventions): ``docs/guide-measurement.md``, section ``srr/measurement/subspaces.py``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from srr._checks import check_choice, check_int, check_subspaces

__all__ = ["FromData", "FromModel", "Fixed", "Learned", "SubspacePolicy", "heads_to_subspaces",
           "infer_dim", "make_policy"]


def heads_to_subspaces(weight: Tensor, heads: int) -> Tensor:
    """Rows of a projection weight ``(K·p, d)`` split into K heads: ``U_k = W_kᵀ`` → ``(K, d, p)``."""
    if weight.ndim != 2 or weight.shape[0] % heads:
        raise ValueError(f"a projection weight (K·p, d) with K={heads} heads must have a first dim divisible "
                         f"by {heads}, got shape {tuple(weight.shape)}")
    return weight.unflatten(0, (heads, -1)).transpose(1, 2)  # (K, d, p)


def infer_dim(module: nn.Module) -> int:
    """Token width d of a module's output, from its last normalisation/linear/conv submodule."""
    d = None
    if isinstance(getattr(module, "subspaces", None), Tensor):
        return module.subspaces.shape[1]
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            d = m.normalized_shape[-1]
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            d = m.num_features
        elif isinstance(m, nn.Linear):
            d = m.out_features
        elif isinstance(m, nn.modules.conv._ConvNd):
            d = m.out_channels
    if d is None:
        raise ValueError(f"cannot infer the token width of a {type(module).__name__}; give it, e.g. Learned(heads=4, "
                         f"dim=256)")
    return d


class SubspacePolicy(nn.Module):
    """Base class: ``bind(model, modules)`` once, then ``subspaces(i) -> (K, d, p)`` for layer i."""

    needs_fit = False  # True while U must still be fitted from tokens (FromData)

    def bind(self, model: nn.Module, modules: Sequence[nn.Module]) -> None:
        self.num_layers = len(modules)

    def subspaces(self, index: int) -> Tensor:  # every concrete policy overrides this
        raise TypeError(f"{type(self).__name__} is a SubspacePolicy without subspaces(index): subclass FromModel, "
                        "FromData, Learned or Fixed, or define subspaces(index) -> (K, d, p)")


class FromModel(SubspacePolicy):
    """The layer's own attention heads: CRATE ``block.subspaces``; ViT query/key/value weight per head.

    ``projection``: which of a ViT's in-projection thirds to split, ``"q"``, ``"k"`` or ``"v"``.
    """

    def __init__(self, *, projection: Literal["q", "k", "v"] = "q"):
        super().__init__()
        if projection not in ("q", "k", "v"):
            raise ValueError(f"projection must be 'q', 'k' or 'v', got {projection!r}")
        self.projection = projection

    def bind(self, model, modules):
        super().bind(model, modules)
        self._getters = [self._getter(m) for m in modules]

    def _getter(self, module: nn.Module):
        if isinstance(getattr(module, "subspaces", None), Tensor):  # CRATE block / MSSA
            return lambda: module.subspaces
        third = "qkv".index(self.projection)
        attn = getattr(module, "self_attention", None)  # torchvision EncoderBlock
        if isinstance(attn, nn.MultiheadAttention):
            if attn.in_proj_weight is None:
                raise ValueError("FromModel needs a packed in_proj_weight (kdim = vdim = embed_dim)")
            d = attn.embed_dim
            return lambda: heads_to_subspaces(attn.in_proj_weight[third * d:(third + 1) * d], attn.num_heads)
        attn = getattr(module, "attn", None)  # timm Block: attn.qkv Linear(d, 3d)
        if attn is not None and isinstance(getattr(attn, "qkv", None), nn.Linear):
            d = attn.qkv.in_features
            return lambda: heads_to_subspaces(attn.qkv.weight[third * d:(third + 1) * d], attn.num_heads)
        raise ValueError(f"FromModel: a {type(module).__name__} has no attention heads to take subspaces from; "
                         f"use FromData(heads=...) or Learned(heads=...)")

    def subspaces(self, index: int) -> Tensor:
        return self._getters[index]()


class Fixed(SubspacePolicy):
    """Given subspaces: one ``(K, d, p)`` tensor for every layer, or one per layer."""

    def __init__(self, subspaces: Tensor | Sequence[Tensor]):
        super().__init__()
        self._given = subspaces

    def bind(self, model, modules):
        super().bind(model, modules)
        given = self._given
        if isinstance(given, Tensor):
            given = [given] * len(modules)
        if len(given) != len(modules):
            raise ValueError(f"subspaces must be one (K, d, p) tensor or one per layer ({len(modules)}), got "
                             f"{len(given)}")
        for U in given:
            if not isinstance(U, Tensor) or U.ndim != 3:
                raise ValueError(f"subspaces must be (K, d, p) tensors, got {getattr(U, 'shape', U)!r}")
        self._list = list(given)

    def subspaces(self, index: int) -> Tensor:
        return self._list[index]


def _k_subspaces(X: Tensor, K: int, p: int, iters: int, generator: torch.Generator) -> Tensor:
    """Group labels ``(n,)`` of the rows of ``X (n, d)``: K-subspaces clustering (k-means whose
    centres are p-dim subspaces through the origin: each row joins the subspace that keeps most
    of its energy ``‖U_kᵀx‖²/‖x‖²``; each subspace is refitted as its group's top-p principal directions).

    Initialised farthest-first on ``|cos|`` (rows of one subspace are more aligned than rows of
    two), each first subspace spanned by its seed's 2p most aligned rows.
    """
    Xn = nn.functional.normalize(X, dim=1)
    n = len(Xn)
    seeds = [int(torch.randint(n, (1,), generator=generator))]
    for _ in range(1, K):
        closeness = (Xn @ Xn[seeds].T).abs().amax(1)  # (n,)
        seeds.append(int(closeness.argmin()))
    neighbours = (Xn @ Xn[seeds].T).abs().topk(min(2 * p, n), dim=0).indices.T  # (K, 2p)
    bases = torch.stack([_principal_directions(Xn[idx], p, generator) for idx in neighbours])  # (K, d, p)
    labels = None
    for _ in range(iters):
        new = (Xn @ bases).square().sum(-1).argmax(0)  # (n,): energy kept by each subspace
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        bases = torch.stack([_principal_directions(Xn[labels == k], p, generator) for k in range(K)])
    return labels


def _principal_directions(X: Tensor, p: int, generator: torch.Generator) -> Tensor:
    """``(d, p)`` orthonormal: top-p right singular vectors of ``X (n, d)``, completed at random."""
    d = X.shape[1]
    V = torch.linalg.svd(X, full_matrices=False).Vh[:p].T if len(X) else X.new_zeros(d, 0)  # (d, ≤p)
    if V.shape[1] < p:  # fewer tokens than p: fill with random directions orthogonal to V
        fill = torch.randn(d, p - V.shape[1], generator=generator, dtype=X.dtype)
        V = torch.linalg.qr(torch.cat([V, fill], 1)).Q[:, :p]
    return V


class FromData(SubspacePolicy):
    """Principal directions of K groups of tokens, fitted from one batch, then frozen.

    ``heads`` K, ``head_dim`` p (default d // K), ``grouping`` ``"kmeans"`` or ``"labels"``.
    """

    def __init__(self, *, heads: int, head_dim: int | None = None, grouping: Literal["kmeans", "labels"] = "kmeans",
                 iters: int = 20, seed: int = 0):
        super().__init__()
        check_int(heads, "heads", minimum=1)
        check_choice(grouping, "grouping", ("kmeans", "labels"))
        self.heads, self.head_dim, self.grouping, self.iters, self.seed = heads, head_dim, grouping, iters, seed
        self._fitted: list[Tensor] | None = None

    @property
    def needs_fit(self) -> bool:
        return self._fitted is None

    @torch.no_grad()
    def fit(self, tokens: Sequence[Tensor], labels: Tensor | None = None) -> "FromData":
        """Fit U for every layer from its tokens ``(B, N, d)`` (``labels (B,)`` for ``"labels"``)."""
        if self.grouping == "labels" and labels is None:
            raise ValueError("FromData(grouping='labels') needs the batch's labels to fit")
        generator = torch.Generator().manual_seed(self.seed)
        fitted = []
        for Z in tokens:
            B, N, d = Z.shape
            p = self.head_dim or d // self.heads
            if p < 1 or self.heads * p > d:
                raise ValueError(f"FromData needs heads*head_dim <= d, got heads={self.heads}, head_dim={p}, d={d}")
            X = Z.detach().reshape(B * N, d).double().cpu()  # (B·N, d)
            if self.grouping == "labels":
                groups = labels.detach().cpu().repeat_interleave(N)
                classes = groups.unique()
                if len(classes) != self.heads:
                    raise ValueError(f"FromData(grouping='labels') needs heads == number of classes in the batch, "
                                     f"got heads={self.heads} and {len(classes)} classes")
                groups = torch.searchsorted(classes, groups)
            else:
                groups = _k_subspaces(X, self.heads, p, self.iters, generator)
            U = torch.stack([_principal_directions(X[groups == k], p, generator) for k in range(self.heads)])
            fitted.append(U.to(device=Z.device, dtype=torch.float32))  # (K, d, p)
        self._fitted = fitted
        return self

    def reset(self) -> None:
        """Forget the fitted subspaces: the next batch fits them again."""
        self._fitted = None

    def subspaces(self, index: int) -> Tensor:
        if self._fitted is None:
            raise RuntimeError("FromData subspaces are not fitted yet: call fit(tokens) (the regulariser and "
                               "srr.measure do so on the first batch)")
        return self._fitted[index]


class Learned(SubspacePolicy):
    """Orthonormal ``U (K, d, p)`` per layer, a parameter (``orthogonal`` parametrisation).

    ``heads`` K, ``head_dim`` p (default d // K), ``dim`` d (default: inferred from each layer).
    """

    def __init__(self, *, heads: int, head_dim: int | None = None, dim: int | None = None, seed: int = 0):
        super().__init__()
        check_int(heads, "heads", minimum=1)
        self.heads, self.head_dim, self.dim, self.seed = heads, head_dim, dim, seed
        self.bases = nn.ModuleList()

    def bind(self, model, modules):
        super().bind(model, modules)
        generator = torch.Generator().manual_seed(self.seed)
        ref = next(model.parameters(), None)
        self.bases = nn.ModuleList()
        for m in modules:
            d = self.dim or infer_dim(m)
            p = self.head_dim or d // self.heads
            if p < 1 or self.heads * p > d:
                raise ValueError(f"Learned needs heads*head_dim <= d, got heads={self.heads}, head_dim={p}, d={d}")
            basis = nn.Linear(d, self.heads * p, bias=False)
            with torch.no_grad():
                basis.weight.copy_(torch.linalg.qr(torch.randn(d, self.heads * p, generator=generator)).Q.T)
            nn.utils.parametrizations.orthogonal(basis, "weight")
            if ref is not None:
                basis.to(device=ref.device)
            self.bases.append(basis)

    def subspaces(self, index: int) -> Tensor:
        return heads_to_subspaces(self.bases[index].weight, self.heads)  # (K, d, p), orthonormal columns


def make_policy(spec, model: nn.Module) -> SubspacePolicy:
    """A policy from ``"model"``, ``"data"``, ``"learned"``, a policy, or tensors (:class:`Fixed`).

    ``"data"`` / ``"learned"`` take K from the model's attention heads when it has them.
    """
    if isinstance(spec, SubspacePolicy):
        return spec
    if isinstance(spec, Tensor) or (isinstance(spec, Sequence) and not isinstance(spec, str)):
        return Fixed(spec)
    if spec == "model":
        return FromModel()
    if spec in ("data", "learned"):
        heads = _model_heads(model)
        if heads is None:
            raise ValueError(f"subspaces={spec!r} needs the number of subspaces for a {type(model).__name__} "
                             f"(no attention heads to copy it from): pass e.g. "
                             f"{'FromData' if spec == 'data' else 'Learned'}(heads=4)")
        return FromData(heads=heads) if spec == "data" else Learned(heads=heads)
    raise ValueError(f"subspaces must be 'model', 'data', 'learned', a SubspacePolicy or (K, d, p) tensors, got "
                     f"{spec!r}")


def _model_heads(model: nn.Module) -> int | None:
    for m in model.modules():
        U = getattr(m, "subspaces", None)
        if isinstance(U, Tensor):
            return U.shape[0]
        if isinstance(m, nn.MultiheadAttention):
            return m.num_heads
    return None


def check_policy_subspaces(U: Tensor, d: int, label: str) -> Tensor:
    """Validate a policy's output for the layer ``label`` against its tokens' width d."""
    try:
        return check_subspaces(U, d)
    except ValueError as error:
        raise ValueError(f"subspaces of layer {label!r}: {error}") from None
