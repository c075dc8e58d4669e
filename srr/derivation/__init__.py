"""Derivation: layers as optimisation steps on an objective (MATH.md §3–4, YU23 §2).

``derive_step(objective, step_size) -> step``
    A pure function ``step(Z, **params) -> Z⁺ = prox_{κg}(Z − κ∇f(Z))``: ``f`` is the objective's
    smooth part, differentiated with ``torch.func.grad`` (batched over leading dimensions), ``g``
    its non-smooth part. ``params`` are the objective's (``objective.requires``: ``U`` for ``R^c``,
    ``X`` and ``D`` for ``LeastSquares``).

``derive(objective, step_size="auto", *, dim, heads=None, head_dim=None, code_dim=None, steps=1,
start="input", learn_step_size=False, learn_lam=False, frozen=(), **init) -> DerivedLayer``
    An ``nn.Module`` whose ``forward(x)`` returns the **next tokens** (not an update): ``steps``
    steps from ``Z₀ = x`` (or ``Z₀ = 0`` with ``start="zero"``), with ``X = x`` as the signal.
    The objective's parameters are ``nn.Parameter``s (``U (heads, dim, head_dim)``, orthogonal
    init; ``D (dim, code_dim)``, the public code's kaiming-uniform init), exposed as
    ``.subspaces`` / ``.dictionary``. The CRATE pair:

        derive(CompressedCodingRate(eps=ε), step_size=κ, dim=d, heads=K)      # x − κ∇R^c(x; U)   (E6)
        derive(LeastSquares() + L1(lam=λ) + NonNegative(), step_size=η, dim=d)  # (E10), from the input

    (``srr.layers.MSSA`` returns the *update* ``−κ∇R^c``; its ``step(x)`` is ``x + forward(x)``.)

Step sizes: a number, a learnable tensor, ``"auto"`` (``1/L`` from the Lipschitz bounds E7, E11),
``BoundFraction(c)`` (``c/L``), or a function ``(Z, **params) -> κ``; the descent guarantees hold
only for ``κ ≤ 1/L``. ``variants`` holds the objectives of the CRATE pair and of derived variants.
"""
from srr.derivation import variants
from srr.derivation.layer import DerivedLayer, derive
from srr.derivation.lipschitz import (BoundFraction, auto_step_size, coding_rate_step_size, compression_lipschitz,
                                  compression_step_size, ista_step_size, lipschitz_bound)
from srr.derivation.step import Step, derive_step

__all__ = [
    "derive_step", "derive", "Step", "DerivedLayer", "variants",
    "BoundFraction", "auto_step_size", "lipschitz_bound", "compression_lipschitz",
    "compression_step_size", "coding_rate_step_size", "ista_step_size",
]
