"""``CRATEConfig``: every hyper-parameter of a CRATE model (MATH.md §4), as one frozen value.

The public code (Ma-Lab-Berkeley/CRATE, ``model/crate.py``) hard-codes several of these
(η = λ = 0.1, τ = p^{-1/2}, ``randn`` embeddings, CLS pooling); here they are fields whose
defaults reproduce it. A config is stored in our checkpoints as a plain dict
(``to_dict``, from the shared config base), so ``create_model(checkpoint=path)`` alone rebuilds the model.
"""
from __future__ import annotations

from dataclasses import dataclass

from srr._checks import check_choice, check_eps, check_int, check_lam, check_number, check_positive
from srr._config import ConfigBase
from srr.models.variants import REGISTRY, variants_where

# Each variant's description (MATH.md §4.1 table), from the one list of variants (srr/models/variants.py).
VARIANTS: dict[str, str] = {name: variant.description for name, variant in REGISTRY.items()}

POOLS = ("cls", "mean")
BACKENDS = ("auto", "fused", "reference")
INITS = ("public", "vit")


@dataclass(frozen=True)
class CRATEConfig(ConfigBase):
    """Architecture and hyper-parameters of one CRATE model. Defaults: CRATE-Tiny, public code.

    ``heads · head_dim`` need not equal ``dim`` (the public code allows it), except for
    ``crate_t`` (output ``o Wᵀ`` with W the (K·p)×d qkv weight) and ``crate_identity``, which
    need K·p = d.
    """

    dim: int = 384  # d, token width
    depth: int = 12  # L, number of layers (MSSA + ISTA each)
    heads: int = 6  # K, number of subspaces
    head_dim: int = 64  # p, dimension of each subspace
    image_size: int = 224  # square images only
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000  # 0: no head, forward returns pooled features
    variant: str = "crate"
    step_size: float = 0.1  # η of the ISTA step (E10); public code: 0.1
    lam: float = 0.1  # λ of the ISTA step (E10); public code: 0.1
    temperature: float | None = None  # τ of SSA (E8); None: p^{-1/2} as in the public code
    compression_step_size: float | str = 1.0  # κ: scale of the MSSA update (E9's c); exact/derived: the
    # gradient step size, or "auto" for 1/L of (E7) (the descent guarantee; computed per forward)
    eps: float = 0.5  # ε of R^c for crate_exact / crate_derived (never ε²)
    expansion: int = 4  # crate_alpha: overcomplete dictionary d × expansion·d
    ista_steps: int = 2  # crate_alpha: ISTA steps from 0
    pool: str = "cls"  # "cls" (public) or "mean" over all tokens
    init: str = "public"  # "public": randn embeddings, torch defaults; "vit": trunc-normal(0.02)
    dropout: float = 0.0  # inside MSSA (attention weights and output), as in the public code
    emb_dropout: float = 0.0  # after adding position embeddings
    drop_path: float = 0.0  # stochastic depth on residual branches, linear in depth up to this
    backend: str = "auto"  # every layer's path: "auto"/"fused" (the fast one) or "reference" (slow, for checks)
    name: str | None = None  # registry name it was built from (provenance only)

    def __post_init__(self):
        for f in ("dim", "depth", "heads", "head_dim", "image_size", "patch_size", "in_chans", "expansion",
                  "ista_steps"):
            check_int(getattr(self, f), f, minimum=1)
        check_int(self.num_classes, "num_classes", minimum=0)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size must be divisible by patch_size, got image_size={self.image_size}, "
                             f"patch_size={self.patch_size}")
        if self.patch_dim < 2:
            raise ValueError(f"in_chans * patch_size**2 must be >= 2 (the LayerNorm of a one-value patch is constant, "
                             f"so the model would see no image), got in_chans={self.in_chans}, "
                             f"patch_size={self.patch_size}")
        check_choice(self.variant, "variant", sorted(VARIANTS))
        if self.compression_step_size == "auto":
            if not REGISTRY[self.variant].gradient_step:
                raise ValueError(f"compression_step_size='auto' (1/L of E7) is for variants "
                                 f"{', '.join(variants_where(gradient_step=True))}, got variant {self.variant!r}")
        else:
            check_positive(self.compression_step_size, "compression_step_size")
        check_positive(self.step_size, "step_size")
        check_eps(self.eps)
        if not isinstance(self.eps, (int, float)):
            raise ValueError(f"eps must be one finite number > 0 (ε, not ε²), got {self.eps!r}")
        check_lam(self.lam)
        if self.temperature is not None:
            check_positive(self.temperature, "temperature")
        check_choice(self.pool, "pool", POOLS)
        check_choice(self.init, "init", INITS)
        check_choice(self.backend, "backend", BACKENDS)
        for f in ("dropout", "emb_dropout", "drop_path"):
            check_number(getattr(self, f), f, low=0.0, high=1.0, high_open=True)
        if REGISTRY[self.variant].needs_square and self.heads * self.head_dim != self.dim:
            raise ValueError(f"variant {self.variant!r} needs heads*head_dim == dim, got heads={self.heads}, "
                             f"head_dim={self.head_dim}, dim={self.dim}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.in_chans * self.patch_size**2
