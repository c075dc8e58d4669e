"""Input validation shared by every public function.

Each check raises a ``ValueError``/``TypeError`` whose message names the argument, the expected
form and what was passed, so that a user can act on it without reading the source.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def check_eps(eps, name: str = "eps") -> float | Tensor:
    """Return ``eps`` (ε, the distortion) validated as a positive finite scalar or 1-D tensor."""
    if isinstance(eps, bool):
        raise TypeError(f"{name} must be a positive float, got bool {eps!r}")
    if isinstance(eps, (int, float)):
        if not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {eps!r}")
        return float(eps)
    if isinstance(eps, Sequence) and not isinstance(eps, str):
        eps = torch.tensor([float(e) for e in eps], dtype=torch.float64)
    if isinstance(eps, Tensor):
        if eps.ndim > 1:
            raise ValueError(f"{name} must be a scalar or a 1-D tensor of per-subspace values, got shape "
                             f"{tuple(eps.shape)}")
        if not bool(torch.isfinite(eps).all()) or not bool((eps > 0).all()):
            raise ValueError(f"{name} must be finite and > 0, got {eps.tolist()}")
        return eps.item() if eps.ndim == 0 else eps
    raise TypeError(f"{name} must be a positive float (or one per subspace), got {type(eps).__name__}")


def check_tokens(Z, name: str = "Z", *, check_finite: bool = True) -> Tensor:
    """Validate a token set ``Z`` of shape ``(..., N, d)`` with ``N, d >= 1``, floating, finite."""
    if not isinstance(Z, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (..., N, d), got {type(Z).__name__}")
    if Z.ndim < 2:
        raise ValueError(f"{name} must have shape (..., N, d) with at least 2 dims, got shape {tuple(Z.shape)}")
    if Z.shape[-2] == 0 or Z.shape[-1] == 0:
        raise ValueError(f"{name} must hold a non-empty token set (N >= 1 tokens of d >= 1 features), got shape "
                         f"{tuple(Z.shape)}")
    if not Z.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {Z.dtype}")
    if check_finite and not torch.compiler.is_compiling() and not bool(torch.isfinite(Z).all()):
        bad = int((~torch.isfinite(Z)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN/Inf entries "
                         f"(pass check_finite=False to skip this check)")
    return Z


def check_subspaces(U, d: int, name: str = "U") -> Tensor:
    """Validate subspaces ``U`` of shape ``(K, d, p)`` against the token dimension ``d``."""
    if not isinstance(U, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (K, d, p), got {type(U).__name__}")
    if U.ndim != 3:
        raise ValueError(f"{name} must have shape (K, d, p), got shape {tuple(U.shape)}")
    if U.shape[1] != d:
        raise ValueError(f"{name} must have shape (K, d={d}, p) to match the tokens' d={d}, got shape {tuple(U.shape)}")
    if U.shape[0] == 0 or U.shape[2] == 0:
        raise ValueError(f"{name} must hold K >= 1 subspaces of dimension p >= 1, got shape {tuple(U.shape)}")
    return U


def check_int(value, name: str, *, minimum: int | None = None, maximum: int | None = None,
              what: str | None = None) -> int:
    """Validate an int (never a bool) in ``[minimum, maximum]``; ``what`` says what it counts in the message."""
    label = f"{name} ({what})" if what else name
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{label} must be an int{_bounds(minimum, maximum, True, True)}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{label} must be an int{_bounds(minimum, maximum, True, True)}, got {value!r}")
    return value


def check_number(value, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, finite: bool = True) -> float:
    """Validate a real number (never a bool) in the interval given by ``low``/``high`` (closed unless ``*_open``).

    ``finite=True`` also rejects ``inf``; NaN is always rejected.
    """
    expected = f"a{' finite' if finite else ''} number{_bounds(low, high, not low_open, not high_open)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def check_choice(value, name: str, choices) -> str:
    """Validate that ``value`` is one of ``choices``."""
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_positive(value, name: str) -> float:
    """Validate a positive finite scalar hyper-parameter (a step size, a scale)."""
    return check_number(value, name, low=0.0, low_open=True)


def check_nonnegative(value, name: str) -> float:
    """Validate a non-negative finite scalar (a penalty weight λ)."""
    return check_number(value, name, low=0.0)


def check_lam(lam, name: str = "lam") -> float:
    """Validate a penalty weight λ: a finite number >= 0 (``inf`` and NaN are rejected)."""
    return check_number(lam, name, low=0.0)


def _bounds(low, high, low_closed: bool, high_closed: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_closed else '>'} {low:g}")
    if high is not None:
        parts.append(f"{'<=' if high_closed else '<'} {high:g}")
    return (" " + " and ".join(parts)) if parts else ""


def check_finite_gram(G: Tensor, Z: Tensor, name: str = "Z") -> None:
    """Finiteness of ``Z`` read off a Gram matrix of it (NaN/Inf in ``Z`` always reach ``G``).

    ``G`` is far smaller than ``Z``, so this costs a fraction of scanning ``Z``; ``Z`` itself is
    scanned only to word the error, which also names a finite ``Z`` whose Gram overflows. Skipped
    under ``torch.compile``: a raise on data would break the graph (``fullgraph=True`` fails).
    """
    if torch.compiler.is_compiling() or bool(torch.isfinite(G).all()):
        return
    check_tokens(Z, name)  # raises, counting the NaN/Inf entries, when Z has any
    raise ValueError(f"{name} is finite but its Gram matrix overflows {G.dtype} (largest |entry| "
                     f"{float(Z.detach().abs().max()):.3g}); rescale {name} or pass float64")
