"""Causal compression layers for language (MATH.md §8): token t is updated from ``z_1 … z_t`` only.

``forward(x)`` returns the **update** ``(B, T, dim) -> (B, T, dim)`` that a block adds to the residual
stream, as :class:`~srr.layers.MSSA` and :class:`~srr.layers.TSSA` do; ``step(x) = x + forward(x)``.

- :class:`CausalMSSA` (E15): CRATE-GPT's attention (Ma-Lab-Berkeley/CRATE PR #13): one bias-free head
  projection ``c_attn`` used as Q, K and V, ``softmax(w wᵀ/√p + causal mask) w`` per head (SDPA with
  ``is_causal=True``), then ``c_proj``.
- :class:`CausalExactCompression` (E14): the exact causal step ``−κ_t ∇_{z_t} R^c(Z_{≤t})``: per position and
  head one p×p Cholesky solve against the cumulative prefix Gram ``I + β_t S_{k,t}``, batched over positions
  in chunks, no T×T matrix.
- :class:`CausalTSSA` (E16): ToST's causal Token Statistics Self-Attention (``tost_lang``'s
  ``CausalSelfAttention_TSSA``, same state-dict keys), O(T) by cumulative sums; ``output="tied"`` with Π held
  fixed is the derived E16 step.

Each takes ``backend=``: ``"auto"``/``"fused"`` (the fast path) or ``"reference"`` (the derived step of
``srr.derive`` where there is an objective, the explicit masked softmax for E15); ``srr.layers.check``
compares the two.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from srr._checks import check_choice, check_eps, check_int, check_number, check_positive
from srr.derivation import derive_step
from srr.linalg import working_dtype
from srr.objective import CausalCompressedCodingRate, CausalVariationalCompressedCodingRate
from srr.objective.causal import prefix_scale

BACKENDS = ("auto", "fused", "reference")
TSSA_OUTPUTS = ("tost", "tied")
GRAM_CHUNK_ELEMENTS = 2**22  # prefix Grams formed at once by CausalExactCompression (16 MiB in float32)


def _heads(a: Tensor, heads: int) -> Tensor:
    """``(..., T, K·p) -> (..., K, T, p)``."""
    return a.unflatten(-1, (heads, -1)).transpose(-3, -2)


def _tokens(a: Tensor) -> Tensor:
    """``(..., K, T, p) -> (..., T, K·p)``."""
    return a.transpose(-3, -2).flatten(-2)


def _check_sequence(x: Tensor, dim: int) -> None:
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[-1] != dim:
        raise ValueError(f"x must be a sequence of tokens (..., T, dim={dim}), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")


class CausalMSSA(nn.Module):
    """CRATE-GPT's causal multi-head subspace self-attention (E15): ``x (..., T, dim) -> update (..., T, dim)``.

    ``w = c_attn(x)`` (``Linear(dim, heads·head_dim, bias=False)``: the head projection, ``U_k = W_kᵀ``) split
    into heads and used as query, key and value: ``softmax(τ w_k w_kᵀ + causal mask) w_k`` with ``τ = p^{-1/2}``
    (``temperature``), heads concatenated, then ``c_proj`` (``Linear(heads·head_dim, dim, bias=bias)``) and
    dropout — the keys ``c_attn.weight``, ``c_proj.weight``, ``c_proj.bias`` of the CRATE-GPT pull request.
    ``dropout`` acts on the attention weights and after ``c_proj`` (nanoGPT's). ``backend``:
    ``"auto"``/``"fused"`` (SDPA, ``is_causal=True``) or ``"reference"`` (the explicit masked T×T softmax).
    """

    def __init__(self, dim: int, *, heads: int, head_dim: int | None = None, dropout: float = 0.0,
                 bias: bool = True, temperature: float | None = None, backend: str = "auto"):
        super().__init__()
        self.dim, self.heads = check_int(dim, "dim", minimum=1), check_int(heads, "heads", minimum=1)
        self.head_dim = check_int(dim // heads if head_dim is None else head_dim, "head_dim", minimum=1)
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.dropout = check_number(dropout, "dropout", low=0.0, high=1.0, high_open=True)
        self.temperature = self.head_dim ** -0.5 if temperature is None else check_positive(temperature, "temperature")
        inner = self.heads * self.head_dim
        self.c_attn = nn.Linear(dim, inner, bias=False)  # W: (K·p, d), Q = K = V
        self.c_proj = nn.Linear(inner, dim, bias=bool(bias))
        self.resid_dropout = nn.Dropout(dropout)

    @property
    def subspaces(self) -> Tensor:
        """``U (K, d, p)``, a differentiable view of ``c_attn.weight``: ``U_k = W_kᵀ``."""
        return self.c_attn.weight.unflatten(0, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:  # (..., T, d) -> (..., T, d)
        if self.backend == "reference":
            return self.reference(x)
        w = _heads(self.c_attn(x), self.heads)  # (..., K, T, p)
        p = self.dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(w, w, w, dropout_p=p, is_causal=True, scale=self.temperature)
        return self.resid_dropout(self.c_proj(_tokens(o)))

    def step(self, x: Tensor) -> Tensor:
        """The next tokens ``x + forward(x)``."""
        return x + self.forward(x)

    def attention(self, x: Tensor) -> Tensor:
        """The explicit maps ``softmax(τ w_k w_kᵀ + causal mask)`` ``(..., K, T, T)``; row t is 0 after column t."""
        w = _heads(self.c_attn(x), self.heads)  # (..., K, T, p)
        T = w.shape[-2]
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        return torch.softmax((w @ w.mT * self.temperature).masked_fill(future, float("-inf")), dim=-1)

    def reference(self, x: Tensor) -> Tensor:
        """The slow reference of ``forward`` (E15 as written): the explicit masked softmax, used by
        :func:`srr.layers.check`."""
        w = _heads(self.c_attn(x), self.heads)  # (..., K, T, p)
        attn = F.dropout(self.attention(x), self.dropout, self.training)
        return self.resid_dropout(self.c_proj(_tokens(attn @ w)))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, head_dim={self.head_dim}, temperature={self.temperature:.4g}, "
                f"backend={self.backend!r}")


def _scan(X: Tensor) -> Tensor:
    """``Σ_{s≤t} X_s`` along dim -3, one vectorised add per position (in order, as ``cumsum``)."""
    out = torch.empty_like(X)
    out[..., 0, :, :] = X[..., 0, :, :]
    for t in range(1, X.shape[-3]):
        torch.add(out[..., t - 1, :, :], X[..., t, :, :], out=out[..., t, :, :])
    return out


class _PrefixSum(torch.autograd.Function):
    """``X.cumsum(-3)`` for ``X (..., c, p, p)`` on the CPU: there ``cumsum`` along a dim that is not the innermost is
    a strided scalar scan, ~6× slower than a loop of contiguous p×p adds at p = 64. Its backward is the reversed
    prefix sum, through this Function again (differentiable to any order)."""

    @staticmethod
    def forward(ctx, X: Tensor) -> Tensor:
        return _scan(X)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _PrefixSum.apply(grad.flip(-3)).flip(-3)


def _prefix_sum(X: Tensor) -> Tensor:
    """``X.cumsum(-3)``: :class:`_PrefixSum` eagerly on the CPU; ``cumsum`` on a GPU and under ``torch.compile``."""
    if X.device.type != "cpu" or torch.compiler.is_compiling():
        return X.cumsum(-3)
    return _PrefixSum.apply(X)


def _prefix_solve_chunk(a: Tensor, before: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """``(I + β_t S_t)⁻¹ a_t`` for a chunk of positions, ``S_t = before + Σ_{chunk s ≤ t} a_s a_sᵀ``.

    ``a (..., K, c, p)``, ``before (..., K, p, p)`` (the Gram of the positions before the chunk), ``beta (c,)``
    -> ``(..., K, c, p)`` and the Gram after the chunk."""
    S = _prefix_sum(a.unsqueeze(-1) * a.unsqueeze(-2)) + before.unsqueeze(-3)  # (..., K, c, p, p)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    L = torch.linalg.cholesky_ex(eye + beta[:, None, None] * S)[0]  # eigenvalues ≥ 1: no failure to handle
    # a copy: a view of the last Gram would keep the whole chunk's S alive (and, checkpointed, every chunk's)
    return torch.cholesky_solve(a.unsqueeze(-1), L).squeeze(-1), S[..., -1, :, :].clone()


def causal_exact_update(x: Tensor, W: Tensor, *, heads: int, eps: float, step_size: Tensor | float) -> Tensor:
    """``−κ_t ∇_{z_t} R^c(Z_{≤t}; U, ε)`` for every position (E14): ``x (..., T, d)``, ``W = Uᵀ (K·p, d)``,
    ``step_size`` a number or ``(T,)`` -> ``(..., T, d)``.

    Per position and head one p×p Cholesky solve against the cumulative prefix Gram, in chunks of
    positions (``GRAM_CHUNK_ELEMENTS``; with more than one chunk, each chunk's Grams are recomputed in the
    backward rather than stored, so memory is O(T·K·p) plus one chunk's Grams: flat in T, bench_causal). The
    head algebra runs in ``x``'s working dtype.
    """
    T = x.shape[-2]
    p = W.shape[0] // heads
    wd = working_dtype(x.dtype)
    a = _heads(x @ W.mT, heads).to(wd)  # (..., K, T, p)
    beta = prefix_scale(p, T, eps, a)  # (T,)
    batch = a.numel() // (T * p)
    chunk = max(1, min(T, GRAM_CHUNK_ELEMENTS // max(1, batch * p * p)))
    before = a.new_zeros(*a.shape[:-2], p, p)
    solved = []
    for start in range(0, T, chunk):
        args = (a[..., start:start + chunk, :], before, beta[start:start + chunk])
        if chunk < T and torch.is_grad_enabled():
            s, before = checkpoint(_prefix_solve_chunk, *args, use_reentrant=False)
        else:
            s, before = _prefix_solve_chunk(*args)
        solved.append(s)
    scale = beta * step_size  # (T,): κ_t β_t
    coeff = torch.cat(solved, -2) * scale[:, None]  # (..., K, T, p)
    return -(_tokens(coeff).to(x.dtype) @ W)


class CausalExactCompression(nn.Module):
    """The exact causal compression step (E14): ``x (..., T, dim) -> −κ_t ∇_{z_t} R^c(x_{≤t}; U, ε)``.

    Token t moves along the gradient of its own prefix's compressed coding rate (``β_t = p/(tε²)``), the
    earlier tokens held fixed: row t is ``−κ_t β_t Σ_k (x_t U_k)(I_p + β_t S_{k,t})⁻¹ U_kᵀ``. Weights:
    ``c_attn.weight = W (heads·head_dim, dim)`` (``U_k = W_kᵀ``, CausalMSSA's key). ``step_size`` κ: a number,
    or ``"auto"`` for ``κ_t = 1/L_t`` (E14's per-position bound; the t-th prefix rate then does not increase).
    ``backend``: ``"auto"``/``"fused"`` (chunked Cholesky solves) or ``"reference"`` (the derived step on
    :class:`~srr.objective.CausalCompressedCodingRate`, twice differentiable).
    """

    def __init__(self, dim: int, *, heads: int, head_dim: int | None = None, eps: float = 0.5,
                 step_size: float | str = 1.0, backend: str = "auto"):
        super().__init__()
        self.dim, self.heads = check_int(dim, "dim", minimum=1), check_int(heads, "heads", minimum=1)
        self.head_dim = check_int(dim // heads if head_dim is None else head_dim, "head_dim", minimum=1)
        eps = check_eps(eps)
        if not isinstance(eps, float):
            raise ValueError(f"eps must be one finite number > 0 (ε, not ε²), got {eps!r}")
        self.eps = eps
        self.step_size = "auto" if step_size == "auto" else check_positive(step_size, "step_size (κ, or 'auto')")
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.c_attn = nn.Linear(dim, self.heads * self.head_dim, bias=False)  # W: (K·p, d)

    @property
    def subspaces(self) -> Tensor:
        """``U (K, d, p)``, a differentiable view of ``c_attn.weight``: ``U_k = W_kᵀ``."""
        return self.c_attn.weight.unflatten(0, (self.heads, self.head_dim)).transpose(1, 2)

    def kappa(self, T: int, like: Tensor) -> Tensor | float:
        """κ: the number, or for ``"auto"`` ``κ_t = 1/L_t = tε²/(p‖W‖₂²)`` ``(T,)`` (E14's bound,
        ``srr.objective.causal.causal_lipschitz``), in ``like``'s dtype and device, without gradient. A tensor
        op (no ``float``): ``torch.compile`` traces it without a graph break."""
        if self.step_size != "auto":
            return self.step_size
        with torch.no_grad():
            W = self.c_attn.weight.detach().to(dtype=torch.float64 if like.dtype == torch.float64 else torch.float32)
            L1 = torch.linalg.matrix_norm(W, ord=2).square() * (self.head_dim / self.eps**2)
            t = torch.arange(1, T + 1, dtype=W.dtype, device=W.device)
            return (t / L1).to(dtype=like.dtype, device=like.device)

    def forward(self, x: Tensor) -> Tensor:  # (..., T, d) -> (..., T, d)
        _check_sequence(x, self.dim)
        if self.backend == "reference":
            return self.reference(x)
        dev = x.device.type
        amp = torch.is_autocast_enabled(dev)
        dtype = torch.get_autocast_dtype(dev) if amp else working_dtype(x.dtype)
        with torch.autocast(dev, enabled=False):  # token-wise matmuls in the autocast dtype, solves in float32+
            W = self.c_attn.weight.to(dtype)  # (K·p, d)
            kappa = self.kappa(x.shape[-2], W.to(working_dtype(dtype)))
            update = causal_exact_update(x.to(dtype), W, heads=self.heads, eps=self.eps, step_size=kappa)
        return update if amp else update.to(x.dtype)

    def step(self, x: Tensor) -> Tensor:
        """The next tokens ``x − κ_t ∇_{z_t} R^c(x_{≤t})``."""
        return x + self.forward(x)

    def reference(self, x: Tensor) -> Tensor:
        """The *derived* update ``−κ_t ∇_{z_t}`` (``derive_step`` on :class:`CausalCompressedCodingRate`, E14,
        autodiff with the prefixes held fixed), used by :func:`srr.layers.check`."""
        U = self.subspaces
        step = derive_step(CausalCompressedCodingRate(eps=self.eps), step_size=self.step_size)
        kappa = step.resolve_step_size(x, {"U": U})
        return -kappa * step.gradient(x, U=U)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, head_dim={self.head_dim}, eps={self.eps}, "
                f"step_size={self.step_size}, backend={self.backend!r}")


class CausalTSSA(nn.Module):
    """Causal Token Statistics Self-Attention (ToST's language model, E16): ``x (..., T, dim) -> update``, O(T).

    Per head, by cumulative sums over positions (``w = c_attn(x)``, heads of p):
    ``ŵ_t = w_t² / max(Σ_{s≤t} w_s², 1e-12) + b_{k,t}``; ``Π_t = softmax_k(τ_k Σ_j ŵ_{t,j})``;
    ``m_t = Σ_{s≤t} Π_s w_s² / (Σ_{s≤t} Π_s + 1e-8)``; ``o_t = Π_t w_t ⊘ (1 + (p/ε²) m_t)`` (the gain dropped out
    with ``dropout``). ``output="tost"``: ``c_proj(−o)`` then dropout — ``tost_lang``'s ``CausalSelfAttention_TSSA``
    (``eps=None``: p/ε² = 1), keys ``c_attn.weight``, ``c_proj.weight``, ``temp (heads, 1)``, ``denom_bias
    (heads, block_size, 1)``, plus ``c_attn.bias``, ``c_proj.bias`` with ``bias=True``. ``output="tied"``:
    ``−κ β_t o Uᵀ`` (β_t = p/(tε²), no ``c_proj``, the mass floor 1e-8 dropped), which with Π held fixed is
    the derived E16 step ``−κ ∇_{z_t} R^c_var,causal``. ``backend``: ``"auto"``/``"fused"`` or ``"reference"``
    (the derived step, Π from :meth:`membership` held fixed in it).
    """

    def __init__(self, dim: int, *, heads: int, block_size: int, head_dim: int | None = None, bias: bool = False,
                 dropout: float = 0.0, output: str = "tost", eps: float | None = None, step_size: float = 1.0,
                 backend: str = "auto"):
        super().__init__()
        self.dim, self.heads = check_int(dim, "dim", minimum=1), check_int(heads, "heads", minimum=1)
        self.head_dim = check_int(dim // heads if head_dim is None else head_dim, "head_dim", minimum=1)
        self.block_size = check_int(block_size, "block_size", minimum=1, what="the longest sequence")
        self.output = check_choice(output, "output", TSSA_OUTPUTS)
        self.backend = check_choice(backend, "backend", BACKENDS)
        if self.output == "tied" and bias:
            raise ValueError("output='tied' needs bias=False: the tied step is −κ∇R^c_var of the linear projection "
                             "x U (E16), got bias=True")
        if eps is not None and not isinstance(check_eps(eps), float):
            raise ValueError(f"eps must be one finite number > 0 (ε, not ε²) or None (ToST: p/ε² = 1), got {eps!r}")
        self.eps = self.head_dim**0.5 if eps is None else float(eps)
        self.step_size = check_positive(step_size, "step_size")
        self.dropout = check_number(dropout, "dropout", low=0.0, high=1.0, high_open=True)
        inner = self.heads * self.head_dim
        self.c_attn = nn.Linear(dim, inner, bias=bool(bias))  # W: (K·p, d)
        if self.output == "tost":
            self.c_proj = nn.Linear(inner, dim, bias=bool(bias))
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.temp = nn.Parameter(torch.ones(self.heads, 1))  # τ_k
        self.denom_bias = nn.Parameter(torch.zeros(self.heads, self.block_size, 1))  # b_{k,t}

    @property
    def subspaces(self) -> Tensor:
        """``U (K, d, p)``, a differentiable view of ``c_attn.weight``: ``U_k = W_kᵀ``."""
        return self.c_attn.weight.unflatten(0, (self.heads, self.head_dim)).transpose(1, 2)

    @property
    def gain_scale(self) -> float:
        """``p/ε²``: the scale of the token statistics in the gain (1 in ToST)."""
        return self.head_dim / self.eps**2

    def _check(self, x: Tensor) -> None:
        _check_sequence(x, self.dim)
        if x.shape[-2] > self.block_size:
            raise ValueError(f"x has T={x.shape[-2]} positions, more than block_size={self.block_size} (the length "
                             f"of denom_bias)")

    def _membership(self, w2: Tensor) -> Tensor:
        """Π ``(..., K, T)`` from the squared head coordinates ``w2 (..., K, T, p)`` (prefix-normalised)."""
        T = w2.shape[-2]
        normed = w2 / w2.cumsum(-2).clamp_min(1e-12) + self.denom_bias[:, :T].to(w2.dtype)  # (..., K, T, p)
        return torch.softmax(normed.sum(-1) * self.temp.to(w2.dtype), dim=-2)  # over heads

    def membership(self, x: Tensor) -> Tensor:
        """Π ``(..., T, K)``: each position's membership in each head, from its prefix's statistics."""
        self._check(x)
        w = _heads(self.c_attn(x), self.heads)
        return self._membership(w.to(working_dtype(w.dtype)).square()).mT

    def forward(self, x: Tensor) -> Tensor:  # (..., T, d) -> (..., T, d)
        self._check(x)
        if self.backend == "reference":
            return self.reference(x)
        w_in = _heads(self.c_attn(x), self.heads)  # (..., K, T, p)
        w = w_in.to(working_dtype(w_in.dtype))  # cumulative statistics in float32 at least
        w2 = w.square()
        pi = self._membership(w2).unsqueeze(-1)  # (..., K, T, 1)
        floor = 1e-8 if self.output == "tost" else 0.0  # ToST's; the tied step is E16's exact moment
        mass = pi.cumsum(-2) + floor
        m = (w2 * pi).cumsum(-2) / torch.where(mass > 0, mass, torch.ones_like(mass))  # (..., K, T, p)
        gain = self.attn_dropout(1.0 / (1.0 + self.gain_scale * m))
        o = _tokens(pi * w * gain).to(w_in.dtype)  # (..., T, K·p)
        return self._output(o)

    def _output(self, o: Tensor) -> Tensor:  # o (..., T, K·p): the gradient in head coordinates / β_t
        if self.output == "tost":
            out = self.resid_dropout(self.c_proj(-o))
            return out if self.step_size == 1.0 else out * self.step_size
        beta = prefix_scale(self.head_dim, o.shape[-2], self.eps, o)  # (T,)
        return (o * (-self.step_size * beta)[:, None]) @ self.c_attn.weight.to(o.dtype)  # −κ β_t o W

    def step(self, x: Tensor) -> Tensor:
        """The next tokens ``x + forward(x)``."""
        return x + self.forward(x)

    def reference(self, x: Tensor) -> Tensor:
        """The derived update (E16 by ``derive_step``'s autodiff, prefixes and Π held fixed in the step), used
        by :func:`srr.layers.check`. ``"tied"``: ``−κ ∇ R^c_var,causal(x; U, Π)``. ``"tost"``: the same gradient
        taken in head coordinates ``w = c_attn(x)`` (U = identity blocks), divided by β_t, through ``c_proj``."""
        self._check(x)
        Pi = self.membership(x)  # (..., T, K)
        step = derive_step(CausalVariationalCompressedCodingRate(eps=self.eps), step_size=self.step_size)
        if self.output == "tied":
            return -self.step_size * step.gradient(x, U=self.subspaces, Pi=Pi)
        inner = self.heads * self.head_dim
        blocks = torch.eye(inner, dtype=x.dtype, device=x.device).unflatten(1, (self.heads, self.head_dim))
        w = self.c_attn(x)  # (..., T, K·p)
        grad = step.gradient(w, U=blocks.transpose(0, 1), Pi=Pi)  # β_t·o
        beta = prefix_scale(self.head_dim, x.shape[-2], self.eps, w)
        return self._output(grad / beta[:, None])

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, head_dim={self.head_dim}, block_size={self.block_size}, "
                f"output={self.output!r}, eps={self.eps:.4g}, step_size={self.step_size}, backend={self.backend!r}")
