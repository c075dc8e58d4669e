"""Causal language models: CRATE-GPT, its exact and derived forms, the ToST language model, and GPT.

One decoder (nanoGPT's ``model.py`` layout and state-dict names: ``transformer.wte/wpe/h/ln_f``, ``lm_head``
tied to ``wte``, blocks ``ln_1, attn, ln_2, mlp``) with the block of ``LMConfig.variant`` (MATH.md §8):

| variant | block (x: the residual stream) | final LN |
| --- | --- | --- |
| ``crate`` | ``x + CausalMSSA(LN₁x)``, then ``ISTA(LN₂x)``, no residual (E15: CRATE-GPT, CRATE PR #13) | no |
| ``crate_exact`` | ``x + CausalExactCompression(LN₁x)`` (E14, p×p solves), then ``ISTA(LN₂x)`` | no |
| ``crate_derived`` | both half-steps built by ``srr.derive`` from the causal terms (E14) and (E10) | no |
| ``tost`` | ``x + γ₁⊙CausalTSSA(LN₁x)``, ``x + γ₂⊙MLP(LN₂x)``, LayerScale γ init 1e-5 (E16: ToST's LM) | yes |
| ``gpt`` | ``x + SelfAttention(LN₁x)``, ``x + MLP(LN₂x)``: nanoGPT's GPT, the baseline | yes |

Learned position embedding, GPT-2 init (Linear and Embedding N(0, 0.02), zero biases, every ``c_proj``
N(0, 0.02/√(2L))); the layers' own parameters (ISTA's D, TSSA's ``temp`` and ``denom_bias``, derived
subspaces) keep their own init. ``forward(idx (B, T)) -> logits (B, T, vocab)``; position t reads tokens
≤ t only. Registered sizes: ``nano`` (4 layers, width 128, 4 heads, context 64: nanoGPT's CPU configuration)
and ``small`` (6, 384, 6, context 256: its Shakespeare GPU configuration), e.g. ``crate_lm_nano``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from srr._checks import check_choice, check_eps, check_int, check_lam, check_number, check_positive
from srr._config import ConfigBase
from srr.layers import ISTA, CausalExactCompression, CausalMSSA, CausalTSSA
from srr.models.blocks import LayerTokens
from srr.models.registry import register_model

LM_VARIANTS = {
    "crate": "CRATE-GPT (CRATE pull request #13): causal MSSA, then ISTA without a residual; tied head, no final LN",
    "crate_exact": "CRATE-GPT with the exact causal compression step (E14: per-prefix p×p solves) for the softmax",
    "crate_derived": "every half-step built by srr.derive from the causal rate (E14) and the ISTA objective (E10)",
    "tost": "ToST's language model: causal TSSA (E16, linear in T) and a GELU MLP, each behind LayerScale 1e-5",
    "gpt": "nanoGPT's GPT: causal softmax attention and a GELU MLP (the baseline)",
}
SIZES = {  # nanoGPT's configurations for Tiny Shakespeare
    "nano": dict(depth=4, dim=128, heads=4, context=64),  # its CPU configuration
    "small": dict(depth=6, dim=384, heads=6, context=256),  # its GPU configuration
}


@dataclass(frozen=True)
class LMConfig(ConfigBase):
    """Architecture of one causal language model. Defaults: ``crate_lm_nano`` on Tiny Shakespeare's 65 characters."""

    variant: str = "crate"  # see LM_VARIANTS
    vocab_size: int = 65  # Tiny Shakespeare's characters
    context: int = 64  # T, the longest sequence (the position embedding's length; nanoGPT's block_size)
    dim: int = 128  # d
    depth: int = 4  # L
    heads: int = 4  # K; each head has p = dim / heads coordinates
    dropout: float = 0.0  # after the embeddings, inside attention and on every residual branch (nanoGPT's)
    bias: bool = False  # biases in the LayerNorms and the Linear layers (nanoGPT's train.py and ToST: False);
    # CRATE-GPT's c_proj always has one, its c_attn never (E15)
    step_size: float = 0.1  # η of ISTA (E10), PR #13: 0.1
    lam: float = 0.1  # λ of ISTA (E10), PR #13: 0.1
    eps: float = 0.5  # ε of the causal rate (E14): crate_exact and crate_derived
    compression_step_size: float = 1.0  # κ of the crate_exact / crate_derived compression step
    layer_scale: float = 1e-5  # tost: initial LayerScale γ
    name: str | None = None  # registry name it was built from (provenance only)

    def __post_init__(self) -> None:
        check_choice(self.variant, "variant", list(LM_VARIANTS))
        for f in ("vocab_size", "context", "dim", "depth", "heads"):
            check_int(getattr(self, f), f, minimum=1)
        if self.dim % self.heads:
            raise ValueError(f"dim must be divisible by heads, got dim={self.dim}, heads={self.heads}")
        check_number(self.dropout, "dropout", low=0.0, high=1.0, high_open=True)
        check_positive(self.step_size, "step_size")
        check_lam(self.lam)
        check_eps(self.eps)
        check_positive(self.compression_step_size, "compression_step_size")
        check_positive(self.layer_scale, "layer_scale")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


# ----- the GPT baseline's layers (nanoGPT's model.py) ----------------------------------------------
class SelfAttention(nn.Module):
    """nanoGPT's ``CausalSelfAttention``: ``c_attn`` (d → 3d: Q, K, V), SDPA with ``is_causal``, ``c_proj``."""

    def __init__(self, dim: int, *, heads: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.c_attn = nn.Linear(dim, 3 * dim, bias=bias)
        self.c_proj = nn.Linear(dim, dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, d) -> (B, T, d)
        q, k, v = self.c_attn(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # each (B, K, T, p)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).flatten(-2)))  # (B, T, d)


class MLP(nn.Module):
    """``Linear(d, 4d)``, GELU, ``Linear(4d, d)``, dropout (nanoGPT's and ToST's)."""

    def __init__(self, dim: int, *, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, d) -> (B, T, d)
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class LayerScale(nn.Module):
    """``γ ⊙ x``, γ a learned d-vector (ToST: init 1e-5)."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class _Derived(nn.Module):
    """A ``srr.derive`` layer in a block (its ``subspaces``/``dictionary`` passed through)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    @property
    def subspaces(self) -> Tensor:
        return self.layer.subspaces

    @property
    def dictionary(self) -> Tensor:
        return self.layer.dictionary

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


# ----- each variant's half-steps -----------------------------------------------------------------
def _attention(cfg: LMConfig) -> nn.Module:
    """The first half-step's layer (it returns the update the block adds)."""
    if cfg.variant == "gpt":
        return SelfAttention(cfg.dim, heads=cfg.heads, dropout=cfg.dropout, bias=cfg.bias)
    if cfg.variant == "crate":
        return CausalMSSA(cfg.dim, heads=cfg.heads, dropout=cfg.dropout)  # c_proj with a bias, c_attn without (E15)
    if cfg.variant == "crate_exact":
        return CausalExactCompression(cfg.dim, heads=cfg.heads, eps=cfg.eps, step_size=cfg.compression_step_size)
    if cfg.variant == "tost":
        return CausalTSSA(cfg.dim, heads=cfg.heads, block_size=cfg.context, bias=cfg.bias, dropout=cfg.dropout)
    from srr.derivation import derive  # derived layers: as srr/models/variants.py, imported when built
    from srr.objective import CausalCompressedCodingRate

    return _Derived(derive(CausalCompressedCodingRate(eps=cfg.eps), step_size=cfg.compression_step_size,
                           dim=cfg.dim, heads=cfg.heads, head_dim=cfg.head_dim, output="update"))


def _second(cfg: LMConfig) -> nn.Module:
    """The second half-step's layer: ISTA (CRATE; it returns the next tokens) or an MLP (an update)."""
    if cfg.variant in ("gpt", "tost"):
        return MLP(cfg.dim, dropout=cfg.dropout, bias=cfg.bias)
    if cfg.variant == "crate_derived":
        from srr.derivation import derive, variants

        return _Derived(derive(variants.ista(cfg.lam), step_size=cfg.step_size, dim=cfg.dim))
    return ISTA(cfg.dim, step_size=cfg.step_size, lam=cfg.lam)


class Block(nn.Module):
    """One layer: ``x + s₁(attn(ln_1 x))``, then ``x + s₂(mlp(ln_2 x))``, or ``mlp(ln_2 x)`` alone for CRATE,
    whose ``mlp`` is the ISTA step (no residual: its output is the sparse code). ``s`` is LayerScale (tost) or
    the identity. The names are nanoGPT's, which PR #13 and ToST's ``tost_lang`` (nanoGPT files) keep."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.dim, bias=cfg.bias)
        self.attn = _attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.dim, bias=cfg.bias)
        self.mlp = _second(cfg)
        self.residual_mlp = cfg.variant in ("gpt", "tost")
        if cfg.variant == "tost":
            self.ls_1, self.ls_2 = LayerScale(cfg.dim, cfg.layer_scale), LayerScale(cfg.dim, cfg.layer_scale)
        else:
            self.ls_1 = self.ls_2 = nn.Identity()

    def tokens(self, x: Tensor) -> LayerTokens:
        """The layer, keeping every intermediate, each ``(B, T, d)``."""
        mssa_input = self.ln_1(x)
        half = x + self.ls_1(self.attn(mssa_input))  # Z^{ℓ+½}
        ista_input = self.ln_2(half)
        out = half + self.ls_2(self.mlp(ista_input)) if self.residual_mlp else self.mlp(ista_input)
        return LayerTokens(x, mssa_input, half, ista_input, out)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, d) -> (B, T, d)
        return self.tokens(x).output


class LanguageModel(nn.Module):
    """A causal language model of ``LMConfig.variant``: ``forward(idx (B, T) int64) -> logits (B, T, vocab)``."""

    def __init__(self, config: LMConfig | None = None, /, **fields):
        super().__init__()
        cfg = (config or LMConfig()).replace(**fields) if fields else (config or LMConfig())
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.dim),
            wpe=nn.Embedding(cfg.context, cfg.dim),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.depth)]),
            ln_f=nn.LayerNorm(cfg.dim, bias=cfg.bias) if cfg.variant in ("gpt", "tost") else nn.Identity(),
        ))
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied (nanoGPT, PR #13)
        self._init_gpt2()

    def _init_gpt2(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # the residual projections, scaled for depth (GPT-2)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.depth))

    def blocks(self) -> list[Block]:
        return list(self.transformer.h)

    def no_weight_decay(self) -> set[str]:
        """Besides norms and biases: the position embedding, LayerScale γ and TSSA's ``temp``/``denom_bias``."""
        names = {n for n, _ in self.named_parameters()}
        return {"transformer.wpe.weight"} | {n for n in names if n.endswith((".gamma", ".temp", ".denom_bias"))}

    def embed(self, idx: Tensor) -> Tensor:
        """Z⁰ ``(B, T, d)`` of token ids ``(B, T)``."""
        if idx.ndim != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"idx must be (B, T) integer token ids, got {tuple(idx.shape)} {idx.dtype}")
        T = idx.shape[1]
        if T > self.config.context:
            raise ValueError(f"sequence length {T} exceeds the model's context {self.config.context}")
        pos = torch.arange(T, device=idx.device)
        return self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, d)

    def forward_layer_tokens(self, idx: Tensor) -> tuple[Tensor, list[LayerTokens]]:
        """Logits and every layer's :class:`LayerTokens` (Z^ℓ, LN₁Z^ℓ, Z^{ℓ+½}, LN₂Z^{ℓ+½}, Z^{ℓ+1}), one pass."""
        z, layers = self.embed(idx), []
        for block in self.transformer.h:
            layers.append(block.tokens(z))
            z = layers[-1].output
        return self.lm_head(self.transformer.ln_f(z)), layers

    def forward(self, idx: Tensor) -> Tensor:  # (B, T) -> (B, T, vocab)
        z = self.embed(idx)
        for block in self.transformer.h:
            z = block(z)
        return self.lm_head(self.transformer.ln_f(z))

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Sample ``max_new_tokens`` after ``idx (B, T0)`` → ``(B, T0 + max_new_tokens)`` (nanoGPT's: the last
        ``context`` tokens are read; ``temperature`` divides the logits; ``top_k`` keeps the k most likely)."""
        check_int(max_new_tokens, "max_new_tokens", minimum=0)
        check_positive(temperature, "temperature")
        if top_k is not None:
            check_int(top_k, "top_k", minimum=1)
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.context:])[:, -1, :].float() / temperature  # (B, vocab)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
                logits = logits.masked_fill(logits < kth, -math.inf)
            probs = F.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, nxt.to(idx.dtype)), dim=1)
        self.train(was_training)
        return idx


def load_language_model(path) -> LanguageModel:
    """The model saved at ``path``: an ``srr train`` run folder of a language model (its ``checkpoints/latest.pt``)
    or such a checkpoint file; loading is strict (srr.models.checkpoints)."""
    from pathlib import Path

    from srr.models.checkpoints import (CheckpointError, check_version, is_srr_checkpoint, load_state_dict_strict,
                                        read_checkpoint)

    path = Path(path)
    file = path / "checkpoints" / "latest.pt" if path.is_dir() else path
    obj = read_checkpoint(file)
    source = f"checkpoint {str(file)!r}"
    if not is_srr_checkpoint(obj):
        raise CheckpointError(f"{source} is not an srr checkpoint")
    check_version(obj, source)
    try:
        config = LMConfig.from_dict(obj["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source} does not hold a language model's config: {e}") from e
    return load_state_dict_strict(LanguageModel(config), obj["state_dict"], source=source)


# ----- registry ------------------------------------------------------------------------------------
FAMILIES = {"crate": "crate_lm", "crate_exact": "crate_lm_exact", "crate_derived": "crate_lm_derived",
            "tost": "tost_lm", "gpt": "gpt_lm"}  # variant -> registry family: crate_lm_nano, tost_lm_small, ...


def _entry(variant: str, size: str) -> Callable[..., LanguageModel]:
    name = f"{FAMILIES[variant]}_{size}"

    def build(**kwargs) -> LanguageModel:
        return LanguageModel(LMConfig(variant=variant, **SIZES[size]).replace(**kwargs, name=name))

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{LM_VARIANTS[variant]}; {size}: {SIZES[size]}."
    return build


for _variant in LM_VARIANTS:
    for _size in SIZES:
        register_model(_entry(_variant, _size), task="language")
