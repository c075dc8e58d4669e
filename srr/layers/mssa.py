"""MSSA: the compression half-step of CRATE, hand-optimised (MATH.md §4.1; YU23 eqs. 8–9; HU24).

``forward(x)`` returns the **update** the block adds to the residual stream; ``step(x) = x + forward(x)``.

- ``mode="exact"`` (ours): the true gradient step ``−κ ∇_x R^c(x; U, ε)`` in closed form (E6): a
  p×p Cholesky solve per head, no N×N matrix. Its derived reference is
  ``srr.derivation.derive_step(CompressedCodingRate(eps), κ)``.
- ``mode="softmax"`` (E8, the public code): ``o = concat_k softmax(τ A_k A_kᵀ) A_k`` with
  ``A_k = x U_k`` from one bias-free ``qkv`` Linear used as query, key and value, computed by
  ``F.scaled_dot_product_attention`` (fused, no explicit N×N matrix where the backend allows),
  then one of HU24's outputs (``W = qkv.weight``, shape ``(K·p, d)``, so ``U = Wᵀ``):

  | ``output`` | update | parameters |
  | --- | --- | --- |
  | ``"crate"`` | ``to_out(o) = o W_outᵀ + b`` (public code) | untied ``Linear(K·p, d)`` |
  | ``"crate_c"`` | ``+ o W`` (the literal derivation, E9) | tied |
  | ``"crate_n"`` | ``− o W`` (sign fixed) | tied |
  | ``"crate_t"`` | ``+ o Wᵀ`` (needs ``K·p = d``) | tied |
  | ``"fixed"`` | ``o F``, ``F`` a fixed random buffer | none |
  | ``"identity"`` | ``o`` (needs ``K·p = d``) | none |

  ``step_size`` scales the update (the ``c`` of E9; 1 in the public code).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from srr.derivation import compression_step_size, derive_step
from srr.linalg import working_dtype
from srr.objective import CompressedCodingRate
from srr.layers.exact import exact_compression_update

OUTPUTS = ("crate", "crate_c", "crate_n", "crate_t", "fixed", "identity")
MODES = ("softmax", "exact")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class MSSA(nn.Module):
    """Multi-head subspace self-attention (softmax, E8) or the exact compression step (E6).

    ``x (..., N, dim) -> update (..., N, dim)``. Weights: ``qkv.weight = W (heads·head_dim, dim)``,
    ``subspaces = U (heads, dim, head_dim)`` with ``U_k = W_kᵀ``; ``to_out`` for ``output="crate"``.
    """

    def __init__(self, dim: int, *, heads: int, head_dim: int | None = None, mode: str = "softmax",
                 output: str = "crate", temperature: float | None = None, step_size: float | str = 1.0,
                 eps: float = 0.5, dropout: float = 0.0, orthonormal: bool = False):
        super().__init__()
        self.dim, self.heads = _positive_int(dim, "dim"), _positive_int(heads, "heads")
        self.head_dim = _positive_int(dim // heads if head_dim is None else head_dim, "head_dim")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        inner = self.heads * self.head_dim
        self.mode = mode
        self.output = output if mode == "softmax" else None  # the exact step has no output map
        if self.output in ("crate_t", "identity") and inner != dim:
            raise ValueError(f"output={output!r} needs heads·head_dim == dim, got {self.heads}·{self.head_dim} = {inner} != {dim}")
        if step_size == "auto":
            if mode != "exact":
                raise ValueError("step_size='auto' (1/L from E7) is for mode='exact' only; give the softmax update's scale as a number")
        elif isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not math.isfinite(step_size) or step_size <= 0:
            raise ValueError(f"step_size must be a finite number > 0 or 'auto', got {step_size!r}")
        self.step_size = step_size if step_size == "auto" else float(step_size)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a number > 0 (ε, not ε²), got {eps!r}")
        self.eps = float(eps)
        self.temperature = self.head_dim ** -0.5 if temperature is None else float(temperature)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)

        self.qkv = nn.Linear(dim, inner, bias=False)  # W: (K·p, d)
        if orthonormal:
            if inner > dim:
                raise ValueError(f"orthonormal subspaces need heads·head_dim <= dim, got {inner} > {dim}")
            nn.utils.parametrizations.orthogonal(self.qkv)  # orthonormal rows of W = columns of U
        if self.output == "crate":
            self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))  # public keys to_out.0.*
        elif self.output == "fixed":
            bound = inner ** -0.5  # the scale of an nn.Linear(inner, dim) weight
            self.register_buffer("fixed_output", torch.empty(inner, dim).uniform_(-bound, bound))  # F: (K·p, d)

    @property
    def subspaces(self) -> Tensor:
        """``U (K, d, p)``, a differentiable view of ``qkv.weight``: ``U_k = W_kᵀ``."""
        return self.qkv.weight.unflatten(0, (self.heads, self.head_dim)).transpose(1, 2)

    def kappa(self, N: int) -> float:
        """The step size κ of the exact step for ``N`` tokens (``"auto"``: 1/L of E7)."""
        if self.step_size == "auto":
            return compression_step_size(self.subspaces, self.eps, N)
        return self.step_size

    def forward(self, x: Tensor) -> Tensor:  # (..., N, d) -> (..., N, d)
        if self.mode == "exact":
            return self._exact(x)
        a = self.qkv(x).unflatten(-1, (self.heads, self.head_dim)).transpose(-3, -2)  # (..., K, N, p)
        p = self.dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(a, a, a, dropout_p=p, scale=self.temperature)  # (..., K, N, p)
        return self._output(o.transpose(-3, -2).flatten(-2))  # (..., N, K·p) -> (..., N, d)

    def step(self, x: Tensor) -> Tensor:
        """The next tokens ``x + forward(x)``: for ``mode="exact"``, ``x − κ∇R^c(x)``."""
        return x + self.forward(x)

    def _exact(self, x: Tensor) -> Tensor:
        kappa = self.kappa(x.shape[-2])
        dev = x.device.type
        amp = torch.is_autocast_enabled(dev)
        dtype = torch.get_autocast_dtype(dev) if amp else working_dtype(x.dtype)
        with torch.autocast(dev, enabled=False):  # the Function picks its own precision per operation
            W = self.qkv.weight.to(dtype)  # (K·p, d)
            update = exact_compression_update(x.to(dtype), W, heads=self.heads, eps=self.eps, step_size=kappa)
        return update if amp else update.to(x.dtype)  # (..., N, d)

    def _output(self, o: Tensor) -> Tensor:  # o: (..., N, K·p)
        W = self.qkv.weight  # (K·p, d)
        if self.output == "crate":
            out = self.to_out(o)
        elif self.output == "crate_c":
            out = o @ W
        elif self.output == "crate_n":
            out = -(o @ W)
        elif self.output == "crate_t":
            out = F.linear(o, W)  # o Wᵀ
        elif self.output == "fixed":
            out = o @ self.fixed_output
        else:
            out = o
        return out if self.step_size == 1.0 else out * self.step_size

    def reference(self, x: Tensor) -> Tensor:
        """The slow reference of ``forward``, used by :func:`srr.layers.check`.

        Exact mode: the *derived* update ``−κ ∇R^c`` (``derive_step``'s autodiff gradient, E6; taken
        directly rather than as ``step(x) − x``, which would cancel digits when the update is small).
        Softmax mode: the public code's explicit N×N softmax (E8 has no objective to derive it from).
        """
        if self.mode == "exact":
            step = derive_step(CompressedCodingRate(eps=self.eps), step_size=self.kappa(x.shape[-2]))
            return -step.resolve_step_size(x, {"U": self.subspaces}) * step.gradient(x, U=self.subspaces)
        a = self.qkv(x).unflatten(-1, (self.heads, self.head_dim)).transpose(-3, -2)  # (..., K, N, p)
        attn = torch.softmax(a @ a.mT * self.temperature, dim=-1)  # (..., K, N, N)
        return self._output((attn @ a).transpose(-3, -2).flatten(-2))

    def extra_repr(self) -> str:
        s = f"dim={self.dim}, heads={self.heads}, head_dim={self.head_dim}, mode={self.mode!r}"
        if self.mode == "softmax":
            return s + f", output={self.output!r}, temperature={self.temperature:.4g}, step_size={self.step_size}"
        return s + f", eps={self.eps}, step_size={self.step_size}"
