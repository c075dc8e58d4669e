"""MSSA: the compression half-step of CRATE, softmax attention (MATH.md §4.1; YU23 eqs. 8–9; HU24).

``forward(x)`` returns the **update** ``o ↦ output(o)``, ``o = concat_k softmax(τ A_k A_kᵀ) A_k`` (E8),
``A_k = x U_k``; ``step(x) = x + forward(x)``. The exact step (E6) is :class:`srr.layers.ExactCompression`.
HU24's outputs (``crate``, ``crate_c``, ``crate_n``, ``crate_t``, ``fixed``, ``identity``):
``docs/guide-layers.md``, section ``srr/layers/mssa.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from srr._checks import check_choice, check_int, check_number, check_positive

OUTPUTS = ("crate", "crate_c", "crate_n", "crate_t", "fixed", "identity")
BACKENDS = ("auto", "fused", "reference")


def _hooked(module: nn.Module) -> bool:
    """Whether a forward hook would see ``module`` or a child of it run (fused paths skip their calls)."""
    from torch.nn.modules import module as _m

    return bool(_m._global_forward_hooks or _m._global_forward_pre_hooks) or any(
        m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class MSSA(nn.Module):
    """Multi-head subspace self-attention (softmax, E8) with one of HU24's outputs.

    ``x (..., N, dim) -> update (..., N, dim)``. Weights: ``qkv.weight = W (heads·head_dim, dim)``,
    ``subspaces = U (heads, dim, head_dim)`` with ``U_k = W_kᵀ``; ``to_out`` for ``output="crate"``.
    ``backend``: ``"auto"``/``"fused"`` (SDPA) or ``"reference"`` (the explicit N×N softmax).
    """

    def __init__(self, dim: int, *, heads: int, head_dim: int | None = None, output: str = "crate",
                 temperature: float | None = None, step_size: float = 1.0, dropout: float = 0.0,
                 orthonormal: bool = False, backend: str = "auto"):
        super().__init__()
        self.dim, self.heads = check_int(dim, "dim", minimum=1), check_int(heads, "heads", minimum=1)
        self.head_dim = check_int(dim // heads if head_dim is None else head_dim, "head_dim", minimum=1)
        self.output = check_choice(output, "output", OUTPUTS)
        self.backend = check_choice(backend, "backend", BACKENDS)
        inner = self.heads * self.head_dim
        if self.output in ("crate_t", "identity") and inner != dim:
            raise ValueError(f"output={output!r} needs heads·head_dim == dim, got {self.heads}·{self.head_dim} = "
                             f"{inner} != {dim}")
        if step_size == "auto":
            raise ValueError("step_size='auto' (1/L from E7) is for ExactCompression only; give the softmax "
                             "update's scale as a number")
        self.step_size = check_positive(step_size, "step_size")
        self.temperature = self.head_dim ** -0.5 if temperature is None else check_positive(temperature, "temperature")
        self.dropout = check_number(dropout, "dropout", low=0.0, high=1.0, high_open=True)

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

    def forward(self, x: Tensor) -> Tensor:  # (..., N, d) -> (..., N, d)
        if self.backend == "reference":
            return self.reference(x)
        return self._output(self._attend(x))  # (..., N, K·p) -> (..., N, d)

    def _attend(self, x: Tensor) -> Tensor:  # (..., N, d) -> o (..., N, K·p), fused (E8)
        a = self.qkv(x).unflatten(-1, (self.heads, self.head_dim)).transpose(-3, -2)  # (..., K, N, p)
        p = self.dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(a, a, a, dropout_p=p, scale=self.temperature)  # (..., K, N, p)
        return o.transpose(-3, -2).flatten(-2)

    def step(self, x: Tensor) -> Tensor:
        """The next tokens ``x + forward(x)``."""
        return self.add_update(x, x)

    def add_update(self, residual: Tensor, x: Tensor) -> Tensor:
        """``residual + forward(x)``, the half-step Z^{ℓ+½} = Z^ℓ + C(LN₁(Z^ℓ)) of a CRATE block. For
        ``output="crate"`` the residual, the output bias and the output matmul are one in-place ``addmm``
        (one pass over the tokens fewer than ``residual + forward(x)``). Forward hooks on this module or
        its children see nothing of it: with hooks, or under ``torch.compile``, it is ``residual + forward(x)``."""
        if not self._fuses_residual(residual, x):
            return residual + self.forward(x)
        o = self._attend(x)  # (..., N, K·p)
        out_map = self.to_out[0]
        # (T, d), a new tensor and not a view: the in-place addmm is safe and its backward passes the
        # gradient through (an in-place op on a view would cost autograd a CopySlices: a clone and two copies)
        z = torch.add(residual.reshape(-1, self.dim), out_map.bias)
        z.addmm_(o.reshape(-1, o.shape[-1]), out_map.weight.mT)  # Z + b + o W_outᵀ
        return z.view(residual.shape)

    def _fuses_residual(self, residual: Tensor, x: Tensor) -> bool:
        return (self.output == "crate" and self.step_size == 1.0 and self.backend != "reference"
                and not (self.training and self.dropout > 0) and residual.shape == x.shape
                and residual.dtype == x.dtype == self.to_out[0].weight.dtype
                and not torch.is_autocast_enabled(x.device.type) and not torch.compiler.is_compiling()
                and not _hooked(self))

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
        """The slow reference of ``forward``, used by :func:`srr.layers.check`: the public code's explicit
        N×N softmax (E8 has no objective to derive it from). Dropout on the attention weights as in
        the public code."""
        a = self.qkv(x).unflatten(-1, (self.heads, self.head_dim)).transpose(-3, -2)  # (..., K, N, p)
        attn = F.dropout(self.attention(x), self.dropout, self.training)  # (..., K, N, N)
        return self._output((attn @ a).transpose(-3, -2).flatten(-2))

    def attention(self, x: Tensor) -> Tensor:
        """The explicit maps ``softmax(τ A_k A_kᵀ)`` of (E8), ``(..., N, d) -> (..., K, N, N)``; each row sums
        to 1. Only :meth:`reference` and visualisation compute them; ``forward`` stays fused."""
        a = self.qkv(x).unflatten(-1, (self.heads, self.head_dim)).transpose(-3, -2)  # (..., K, N, p)
        return torch.softmax(a @ a.mT * self.temperature, dim=-1)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, head_dim={self.head_dim}, output={self.output!r}, "
                f"temperature={self.temperature:.4g}, step_size={self.step_size}, backend={self.backend!r}")
