"""CRATE: the white-box transformer of Yu et al. (NeurIPS 2023), MATH.md §4.3.

Details (equations, costs, conventions): ``docs/guide-layers.md``, section ``srr/models/crate.py``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from einops.layers.torch import Rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from srr._checks import check_int
from srr.models.blocks import CRATEBlock, LayerTokens, build_block
from srr.models.config import CRATEConfig


class Transformer(nn.Module):
    """The L layers, under the public name ``transformer.layers``."""

    def __init__(self, blocks: list[CRATEBlock]):
        super().__init__()
        self.layers = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, z: Tensor) -> Tensor:  # (B, N, d) -> (B, N, d)
        for block in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                z = checkpoint(block, z, use_reentrant=False)  # recompute in backward: memory for time
            else:
                z = block(z)
        return z


class CRATE(nn.Module):
    """A CRATE model of any variant. ``CRATE(config)`` or ``CRATE(**config_fields)``.

    ``forward(images (B, C, H, W)) -> logits (B, num_classes)`` (pooled features when
    ``num_classes == 0``). Images must be exactly ``(C, H, W) = (in_chans, image_size, image_size)``.
    """

    def __init__(self, config: CRATEConfig | None = None, /, **fields):
        super().__init__()
        if config is not None and not isinstance(config, CRATEConfig):
            raise TypeError(f"config must be a CRATEConfig, got {type(config).__name__}")
        cfg = (config or CRATEConfig()).replace(**fields) if fields else (config or CRATEConfig())
        self.config = cfg
        p, d = cfg.patch_size, cfg.dim
        self.to_patch_embedding = nn.Sequential(
            Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p),
            nn.LayerNorm(cfg.patch_dim),
            nn.Linear(cfg.patch_dim, d),
            nn.LayerNorm(d),
        )
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.num_patches + 1, d))  # public: randn, std 1
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.emb_dropout = nn.Dropout(cfg.emb_dropout)  # after the position embedding (not MSSA's dropout)
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.transformer = Transformer([build_block(cfg, drop_path=r) for r in rates])
        self.mlp_head = nn.Sequential(nn.LayerNorm(d), self._classifier(cfg.num_classes))
        if cfg.init == "vit":
            self._init_vit()

    # ----- construction -------------------------------------------------------------------
    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.config.dim, num_classes) if num_classes > 0 else nn.Identity()

    def _init_vit(self) -> None:
        """ViT/timm init: trunc-normal(0.02) for Linear weights and embeddings, zero biases (as timm,
        truncated at ±2 absolute, i.e. effectively untruncated at this std). Layer-specific parameters
        (ISTA dictionaries, derived layers) keep their layer's init."""
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head's Linear by a fresh one with ``num_classes`` outputs (0: none)."""
        check_int(num_classes, "num_classes", minimum=0)
        ref = self.mlp_head[0].weight
        head = self._classifier(num_classes).to(device=ref.device, dtype=ref.dtype)
        if self.config.init == "vit" and isinstance(head, nn.Linear):
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        self.mlp_head[1] = head
        self.config = self.config.replace(num_classes=num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer's activations in the backward pass instead of storing them (training only)."""
        self.transformer.grad_checkpointing = bool(enable)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/model.safetensors`` + ``folder/config.json``; ``create_model(pretrained=folder)`` reads it."""
        from srr.models.pretrained import save_pretrained

        return save_pretrained(self, folder)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload the :meth:`save_pretrained` folder to the Hugging Face hub (needs ``srr[hub]``);
        ``create_model(name, pretrained="hf://" + repo_id)`` reads it back. See ``srr.models.push_to_hub``."""
        from srr.models.pretrained import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    # ----- introspection ------------------------------------------------------------------
    def blocks(self) -> list[CRATEBlock]:
        """The L layers in order; ``blocks()[ℓ]`` maps Z^ℓ → Z^{ℓ+1}."""
        return list(self.transformer.layers)

    def layer_subspaces(self) -> list[Tensor]:
        """U^ℓ of every layer, each ``(K, d, p)`` (views of the parameters: differentiable)."""
        return [b.subspaces for b in self.transformer.layers]

    def layer_dictionaries(self) -> list[Tensor]:
        """D^ℓ of every layer, each ``(d, d)`` (``(d, expansion·d)`` for CRATE-α)."""
        return [b.dictionary for b in self.transformer.layers]

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides norms and biases (timm convention), and
        TSSA's temperatures ``temp`` (as in ToST)."""
        return {"pos_embedding", "cls_token"} | {n for n, _ in self.named_parameters() if n.endswith(".temp")}

    # ----- forward ------------------------------------------------------------------------
    def check_images(self, x: Tensor) -> None:
        """Raise a ValueError naming the expected and given image shape if ``x`` does not fit."""
        cfg = self.config
        expected = (cfg.in_chans, cfg.image_size, cfg.image_size)
        if not isinstance(x, Tensor):
            raise TypeError(f"images must be a torch.Tensor of shape (B, {', '.join(map(str, expected))}), "
                            f"got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"images must have shape (B, C={expected[0]}, H={expected[1]}, W={expected[2]}) "
                             f"(in_chans={cfg.in_chans}, image_size={cfg.image_size}), got shape {tuple(x.shape)}")

    def embed(self, x: Tensor) -> Tensor:
        """Z⁰: ``(B, C, H, W) -> (B, 1 + num_patches, d)``."""
        self.check_images(x)
        tokens = self.to_patch_embedding(x)  # (B, n, d)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, d)
        z = torch.cat((cls, tokens), dim=1) + self.pos_embedding  # (B, 1 + n, d)
        return self.emb_dropout(z)

    def forward_features(self, x: Tensor) -> Tensor:
        """Z^L, the last layer's tokens: ``(B, C, H, W) -> (B, 1 + num_patches, d)``."""
        return self.transformer(self.embed(x))

    def forward_head(self, z: Tensor, *, pre_logits: bool = False) -> Tensor:
        """Pool ``Z^L (B, N, d)`` (CLS or mean) and apply the head: ``-> (B, num_classes)``.
        ``pre_logits=True`` returns the pooled ``(B, d)`` features before the head."""
        pooled = z.mean(dim=1) if self.config.pool == "mean" else z[:, 0]  # (B, d)
        return pooled if pre_logits else self.mlp_head(pooled)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.forward_head(self.forward_features(x))

    @property
    def dropout(self) -> nn.Dropout:
        """Deprecated name of :attr:`emb_dropout` (it is the embedding dropout, not MSSA's ``config.dropout``)."""
        warnings.warn("CRATE.dropout is the embedding dropout; use CRATE.emb_dropout", DeprecationWarning,
                      stacklevel=2)
        return self.emb_dropout

    def forward_intermediates(self, x: Tensor) -> tuple[Tensor, list[LayerTokens]]:
        """Deprecated name of :meth:`forward_layer_tokens`: timm's ``forward_intermediates`` has another
        contract (indices, feature maps), which this method never had."""
        warnings.warn("CRATE.forward_intermediates is not timm's; use CRATE.forward_layer_tokens", DeprecationWarning,
                      stacklevel=2)
        return self.forward_layer_tokens(x)

    def forward_layer_tokens(self, x: Tensor) -> tuple[Tensor, list[LayerTokens]]:
        """Logits and every layer's :class:`LayerTokens`, from one pass (same values as ``forward``)."""
        z = self.embed(x)
        layers = []
        for block in self.transformer.layers:
            t = block.tokens(z)
            layers.append(t)
            z = t.output
        return self.forward_head(z), layers
