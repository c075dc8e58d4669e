"""TSSA: Token Statistics Self-Attention (Wu et al., ToST, ICLR 2025; MATH.md §7, E12–E13). O(N).

``forward(x)`` returns the **update** the block adds to the residual stream; ``step(x) = x + forward(x)``:
a step on R^c_var (E13) from token statistics (a membership Π and per-head second moments), no N×N
matrix and no p×p solve. Outputs ``"tost"`` (ToST's untied ``to_out``) and ``"tied"`` (−κ∇R^c_var).
The formulas, the output table and the reference: ``docs/guide-layers.md``, section ``srr/layers/tssa.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from srr._checks import check_choice, check_eps, check_int, check_number, check_positive
from srr.derivation import derive_step
from srr.objective import VariationalCompressedCodingRate
from srr.rates import rate_scale

OUTPUTS = ("tost", "tied")
BACKENDS = ("auto", "fused", "reference")


class TSSA(nn.Module):
    """Token Statistics Self-Attention: ``x (..., N, dim) -> update (..., N, dim)`` in O(N) time and memory.

    Weights: ``qkv.weight = W (heads·head_dim, dim)``, ``temp (heads, 1)`` (τ, init 1), ``to_out`` for
    ``output="tost"`` — the public ToST keys. ``subspaces = U (heads, dim, head_dim)`` with ``U_k = W_kᵀ``.
    ``step_size`` κ scales the update; ``dropout`` acts on the per-head gain ``1/(1 + (p/ε²) m_k)`` and
    after ``to_out``, as in ToST. ``backend``: ``"auto"``/``"fused"`` or ``"reference"`` (the derived step).
    """

    def __init__(self, dim: int, *, heads: int, head_dim: int | None = None, output: str = "tost",
                 eps: float | None = None, step_size: float = 1.0, dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        self.dim, self.heads = check_int(dim, "dim", minimum=1), check_int(heads, "heads", minimum=1)
        self.head_dim = check_int(dim // heads if head_dim is None else head_dim, "head_dim", minimum=1)
        self.output = check_choice(output, "output", OUTPUTS)
        self.backend = check_choice(backend, "backend", BACKENDS)
        if eps is not None and not isinstance(check_eps(eps), float):
            raise ValueError(f"eps must be one finite number > 0 (ε, not ε²) or None (ToST: p/ε² = 1), got {eps!r}")
        self.eps = self.head_dim**0.5 if eps is None else float(eps)
        self.step_size = check_positive(step_size, "step_size")
        self.dropout = check_number(dropout, "dropout", low=0.0, high=1.0, high_open=True)
        inner = self.heads * self.head_dim
        self.qkv = nn.Linear(dim, inner, bias=False)  # W: (K·p, d)
        self.temp = nn.Parameter(torch.ones(self.heads, 1))  # τ_k, ToST's shape
        if self.output == "tost":
            self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))  # ToST keys to_out.0.*

    @property
    def subspaces(self) -> Tensor:
        """``U (K, d, p)``, a differentiable view of ``qkv.weight``: ``U_k = W_kᵀ``."""
        return self.qkv.weight.unflatten(0, (self.heads, self.head_dim)).transpose(1, 2)

    @property
    def gain_scale(self) -> float:
        """``p/ε²``: the scale of the token statistics in the gain (1 in ToST)."""
        return self.head_dim / self.eps**2

    def forward(self, x: Tensor) -> Tensor:  # (..., N, d) -> (..., N, d)
        if self.backend == "reference":
            return self.reference(x)
        a = self.qkv(x).unflatten(-1, (self.heads, self.head_dim))  # (..., N, K, p)
        a2 = a.square()
        column = a2.sum(-3, keepdim=True).clamp_min(1e-24)  # (..., 1, K, p): ‖A_k[:, j]‖², F.normalize's floor
        pi = torch.softmax((a2 / column).sum(-1) * self.temp.squeeze(-1), dim=-1)  # Π: (..., N, K)
        m = torch.einsum("...nk,...nkp->...kp", pi, a2) / pi.sum(-2).unsqueeze(-1)  # (..., K, p)
        gain = F.dropout(1.0 / (1.0 + self.gain_scale * m), self.dropout, self.training)  # (..., K, p)
        o = (pi.unsqueeze(-1) * a * gain.unsqueeze(-3)).flatten(-2)  # (..., N, K·p)
        return self._output(o, x.shape[-2])

    def step(self, x: Tensor) -> Tensor:
        """The next tokens ``x + forward(x)``."""
        return x + self.forward(x)

    def _output(self, o: Tensor, N: int) -> Tensor:  # o: (..., N, K·p), the gradient in head coordinates / β
        if self.output == "tost":
            out = self.to_out(-o)
            return out if self.step_size == 1.0 else out * self.step_size
        return o @ self.qkv.weight * (-self.step_size * rate_scale(self.head_dim, N, self.eps))  # −κβ o W

    def membership(self, x: Tensor) -> Tensor:
        """Π ``(..., N, K)``: ToST's membership of each token in each head (rows on the simplex)."""
        a = self.qkv(x).unflatten(-1, (self.heads, self.head_dim))  # (..., N, K, p)
        normed = F.normalize(a, dim=-3)  # each head's columns to unit norm over the tokens
        return torch.softmax(normed.square().sum(-1) * self.temp.squeeze(-1), dim=-1)

    def reference(self, x: Tensor) -> Tensor:
        """The derived update (E13 by ``derive_step``'s autodiff, Π held fixed in the step), used by
        :func:`srr.layers.check`. ``"tied"``: ``−κ∇_x R^c_var(x; U, Π)``. ``"tost"``: the same gradient
        taken in head coordinates ``A = x Wᵀ`` (U = identity blocks), divided by β, through ``to_out``."""
        N = x.shape[-2]
        Pi = self.membership(x)
        kappa = self.step_size
        step = derive_step(VariationalCompressedCodingRate(eps=self.eps), step_size=kappa)
        if self.output == "tied":
            return -kappa * step.gradient(x, U=self.subspaces, Pi=Pi)
        inner = self.heads * self.head_dim
        blocks = torch.eye(inner, dtype=x.dtype, device=x.device).unflatten(1, (self.heads, self.head_dim))
        grad = step.gradient(self.qkv(x), U=blocks.transpose(0, 1), Pi=Pi)  # β·o: (..., N, K·p)
        return self._output(grad / rate_scale(self.head_dim, N, self.eps), N)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, head_dim={self.head_dim}, output={self.output!r}, "
                f"eps={self.eps:.4g}, step_size={self.step_size}, backend={self.backend!r}")
