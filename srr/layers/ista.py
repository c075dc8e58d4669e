"""ISTA: the sparsification step of CRATE, hand-optimised (MATH.md §4.2, E10, E10'; YU23 eq. 13).

    ReLU(x + η (x − x Dᵀ) D − ηλ) = ReLU(x (I + M) − ηλ),   M = η (D − DᵀD)      (E10')

``ISTA`` spends one token-wise matmul with the identity and threshold in its epilogue (a Triton kernel with
``backend="triton"``; in CPU inference oneDNN's matmul with bias and ReLU fused, and ``I + M`` reused while
the weights are unchanged, checked by value). ``OvercompleteISTA`` is
CRATE-α's (overcomplete D, k steps from 0, decoder D₁). Details: ``docs/guide-layers.md``, section
``srr/layers/ista.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from srr._checks import check_choice, check_int, check_lam, check_positive
from srr.derivation import derive_step
from srr.layers import triton_ista
from srr.objective import L1, LeastSquares, NonNegative

BACKENDS = ("auto", "fused", "torch", "triton", "reference")  # "fused" = "auto"


def _public_init(*shape: int) -> Tensor:
    return nn.init.kaiming_uniform_(torch.empty(*shape))  # a=0, as model/crate.py and CRATE-α


def _onednn_relu_linear_applies(x: Tensor, W: Tensor) -> bool:
    """oneDNN's fused ``ReLU(x Wᵀ + b)`` (CPU, float32, no autograd, eager): one pass over the output
    instead of three (bias copy, matmul, ReLU)."""
    return (x.device.type == "cpu" and x.dtype == W.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or W.requires_grad))
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling() and _onednn_linear())


_ONEDNN_LINEAR: list[bool] = []  # filled on first use: does this build's fused op run and agree with F.linear?


def _onednn_linear() -> bool:
    if not _ONEDNN_LINEAR:
        ok = False
        if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            try:
                x, W = torch.linspace(-1, 1, 15).view(5, 3), torch.linspace(1, -2, 12).view(4, 3)
                b = torch.linspace(-1, 1, 4)
                y = torch.ops.mkldnn._linear_pointwise(x, W, b, "relu", [], "")
                ok = bool(torch.allclose(y, torch.relu(F.linear(x, W, b)), atol=1e-5))
            except RuntimeError:
                ok = False
        _ONEDNN_LINEAR.append(ok)
    return _ONEDNN_LINEAR[0]


def _value(x) -> float:
    return float(x.detach()) if isinstance(x, Tensor) else float(x)


def _lasso_step(*, nonnegative: bool):
    """The derived proximal step on ``½‖X − ZDᵀ‖² + ‖Z‖₁ (+ ι≥0)``; λ enters as ``prox_scale``."""
    objective = LeastSquares() + L1(lam=1.0) + (NonNegative() if nonnegative else 0)
    return derive_step(objective, step_size=1.0)


class ISTA(nn.Module):
    """One ISTA step (E10) from the input: ``x (..., N, d) -> (..., N, d)``, ≥ 0 unless ``nonnegative=False``.

    ``step_size`` η and ``lam`` λ are floats, or ``nn.Parameter``s with ``learnable=True``.
    ``backend``: ``"auto"``/``"fused"`` (the torch path: one matmul with the identity and threshold in its
    epilogue), ``"torch"`` (the same), ``"triton"`` (the fused Triton kernel, CUDA; not the default, because it
    measured no faster than the torch path: docs/guide-layers.md, section ``srr/layers/ista.py``), or
    ``"reference"`` (the derived step, :meth:`reference`).
    """

    def __init__(self, dim: int, *, step_size: float = 0.1, lam: float = 0.1, learnable: bool = False,
                 nonnegative: bool = True, backend: str = "auto"):
        super().__init__()
        check_int(dim, "dim", minimum=1)
        check_choice(backend, "backend", BACKENDS)
        self.dim, self.nonnegative, self.backend, self.learnable = dim, bool(nonnegative), backend, bool(learnable)
        step_size = check_positive(step_size, "step_size")
        lam = check_lam(lam)
        if self.learnable:
            self.step_size = nn.Parameter(torch.tensor(step_size))
            self.lam = nn.Parameter(torch.tensor(lam))
        else:
            self.step_size, self.lam = step_size, lam
        self.weight = nn.Parameter(_public_init(dim, dim))  # D: (d, d)
        self._cached = None  # (copies of D, η, λ; (I + M)ᵀ; −ηλ·1): CPU inference only, see linear_form

    @property
    def dictionary(self) -> Tensor:
        """``D (d, d)``."""
        return self.weight

    def effective_matrix(self) -> Tensor:
        """(E10') ``M = η (D − DᵀD)``, so that the step is ``prox(x + x M − ηλ)``; float32 or wider."""
        D = self.weight
        with torch.autocast(D.device.type, enabled=False):
            D = D if D.dtype == torch.float64 else D.float()
            return (D - D.mT @ D) * self.step_size  # (d, d)

    def threshold(self) -> Tensor | float:
        return self.step_size * self.lam

    def linear_form(self) -> tuple[Tensor, Tensor]:
        """(E10') the argument of the prox as one affine map ``x (I + M) − ηλ = F.linear(x, W, b)``:
        ``W = (I + M)ᵀ (d, d)``, ``b = −ηλ·1 (d,)``; float32 or wider.

        CPU inference (no gradient needed, eager) reuses the last ``W, b`` while the parameters hold the
        values they were formed from, compared by value (an O(d²) check against the O(d³) of ``DᵀD``): a
        write that bypasses version counters (``weight.data.copy_(…)``, as EMA and pruning code do) cannot
        leave it stale. ``ISTA.cache_inference = False`` turns it off (experiments/bench_ista_cache.py
        measures what it saves)."""
        params = self._cache_params()
        cacheable = self._cacheable(params)
        if cacheable and self._cached is not None:
            sources, W, b = self._cached
            if all(s.dtype == p.dtype and s.device == p.device and torch.equal(s, p) for s, p in zip(sources, params)):
                return W, b
        M = self.effective_matrix()
        W = (M + torch.eye(self.dim, device=M.device, dtype=M.dtype)).mT  # (d, d), the weight of x ↦ x (I + M)
        b = -self.threshold() * M.new_ones(self.dim)  # (d,)
        if cacheable:
            W = W.contiguous()
            self._cached = (tuple(p.detach().clone() for p in params), W, b)
        else:
            self._cached = None
        return W, b

    cache_inference = True  # see linear_form

    def _cacheable(self, params: tuple[Tensor, ...]) -> bool:
        """CPU inference only: under autograd and compile ``W`` is recomputed (it is part of the graph); on
        a GPU forming it is cheap and a by-value check would synchronise every forward."""
        return (self.cache_inference and not torch.compiler.is_compiling()
                and all(p.device.type == "cpu" for p in params)
                and not (torch.is_grad_enabled() and any(p.requires_grad for p in params)))

    def _cache_params(self) -> tuple[Tensor, ...]:
        """What ``W, b`` are formed from: D, and η, λ (as tensors: floats are compared by value too)."""
        if self.learnable:
            return self.weight, self.step_size, self.lam
        return self.weight, torch.tensor(float(self.step_size)), torch.tensor(float(self.lam))

    def forward(self, x: Tensor) -> Tensor:  # (..., N, d) -> (..., N, d)
        if self.backend == "reference":
            return self.reference(x)
        x2 = x.reshape(-1, self.dim)  # (T, d)
        if self._use_triton(x):
            M, t = self.effective_matrix(), self.threshold()
            dtype = torch.get_autocast_dtype("cuda") if x.is_cuda and torch.is_autocast_enabled("cuda") else x.dtype
            x2 = x2.to(dtype)
            y = triton_ista.ista_triton(x2, M.to(dtype), t, nonnegative=self.nonnegative)
            return y.reshape(*x.shape[:-1], self.dim)
        W, b = self.linear_form()
        if self.nonnegative and _onednn_relu_linear_applies(x2, W):
            y = torch.ops.mkldnn._linear_pointwise(x2, W, b, "relu", [], "")  # ReLU(x (I + M) − ηλ), one pass
        else:
            if not torch.is_autocast_enabled(x.device.type):
                W, b = W.to(x2.dtype), b.to(x2.dtype)
            if self.nonnegative:
                y = torch.relu_(F.linear(x2, W, b))  # (T, d): ReLU(x (I + M) − ηλ)
            else:
                v = F.linear(x2, W)  # (T, d): x (I + M), soft-thresholded
                y = torch.sign(v) * torch.relu(v.abs() - self.threshold())
        return y.reshape(*x.shape[:-1], self.dim)

    def _use_triton(self, x: Tensor) -> bool:
        """Only ``backend="triton"``: every other backend takes the torch path (class docstring)."""
        if self.backend != "triton":
            return False
        if not triton_ista.available(x):
            raise RuntimeError(f"backend='triton' needs triton and a CUDA tensor (or TRITON_INTERPRET=1 on the "
                               f"CPU), got a {x.device.type} tensor of {x.dtype}; triton installed: "
                               f"{triton_ista.triton is not None}")
        return True

    def reference(self, x: Tensor) -> Tensor:
        """The derived step: ``derive_step(LeastSquares() + L1(λ) + NonNegative(), η)(x, X=x, D=D)``."""
        step = _lasso_step(nonnegative=self.nonnegative)
        return step.apply(x, {"X": x, "D": self.weight}, step_size=self.step_size, prox_scale=self.lam)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, step_size={_value(self.step_size):.4g}, lam={_value(self.lam):.4g}, "
                f"learnable={self.learnable}, nonnegative={self.nonnegative}, backend={self.backend!r}")


class OvercompleteISTA(nn.Module):
    """CRATE-α sparsification: ``steps`` ISTA steps from ``a = 0`` with ``D (d, m)``, ``m = expansion·d``,
    then the decoder: ``x (..., N, d) -> A D₁ᵀ (..., N, d)`` (``x + A D₁ᵀ`` with ``residual=True``).

    Each step is ``a ← ReLU(a + η (x − a Dᵀ) D − ηλ)``; ``η xD`` is computed once and reused.
    """

    def __init__(self, dim: int, *, expansion: int = 4, steps: int = 2, step_size: float = 0.1, lam: float = 0.1,
                 residual: bool = False, backend: str = "auto"):
        super().__init__()
        for name, v in (("dim", dim), ("expansion", expansion), ("steps", steps)):
            check_int(v, name, minimum=1)
        self.dim, self.expansion, self.steps, self.residual = dim, expansion, steps, bool(residual)
        self.step_size = check_positive(step_size, "step_size")
        self.lam = check_lam(lam)
        self.backend = check_choice(backend, "backend", ("auto", "fused", "reference"))
        self.D = nn.Parameter(_public_init(dim, expansion * dim))  # encoder dictionary (d, m)
        self.D1 = nn.Parameter(_public_init(dim, expansion * dim))  # decoder (d, m)

    @property
    def dictionary(self) -> Tensor:
        """``D (d, m)``."""
        return self.D

    def codes(self, x: Tensor) -> Tensor:  # (..., N, d) -> (..., N, m)
        eta, t = self.step_size, self.step_size * self.lam
        s = (x @ self.D) * eta  # η x D: (..., N, m)
        a = torch.relu(s - t)  # the first step from a = 0
        for _ in range(self.steps - 1):
            a = torch.relu(a + s - eta * ((a @ self.D.mT) @ self.D) - t)  # (..., N, m)
        return a

    def forward(self, x: Tensor) -> Tensor:  # (..., N, d) -> (..., N, d)
        if self.backend == "reference":
            return self.reference(x)
        out = self.codes(x) @ self.D1.mT
        return x + out if self.residual else out

    def reference(self, x: Tensor) -> Tensor:
        """``steps`` derived steps on ``½‖x − aDᵀ‖² + λ‖a‖₁ + ι(a ≥ 0)`` from ``a = 0``, then the decoder."""
        step = _lasso_step(nonnegative=True)
        a = x.new_zeros(*x.shape[:-1], self.D.shape[1])
        for _ in range(self.steps):
            a = step.apply(a, {"X": x, "D": self.D}, step_size=self.step_size, prox_scale=self.lam)
        out = a @ self.D1.mT
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, expansion={self.expansion}, steps={self.steps}, step_size={self.step_size:.4g}, "
                f"lam={self.lam:.4g}, residual={self.residual}, backend={self.backend!r}")
