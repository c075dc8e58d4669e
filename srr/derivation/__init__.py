"""Derivation: layers as optimisation steps on an objective (MATH.md §3–4, YU23 §2).

- ``derive_step(objective, step_size) -> step``: the pure ``Z⁺ = prox_{κg}(Z − κ∇f(Z))``, ``f`` the smooth
  part (``torch.func.grad``), ``g`` the non-smooth part (its prox).
- ``derive(objective, step_size="auto", *, dim, heads=None, ...) -> DerivedLayer``: an ``nn.Module`` whose
  ``forward(x)`` returns the **next tokens**, its parameters (``U``, ``D``) learnable. Also ``srr.derive``.
- step sizes: a number, a tensor, ``"auto"`` (1/L from each term's ``lipschitz``, E7, E11),
  ``BoundFraction(c)``, or a function; ``variants`` holds the objectives of the CRATE pair and more.
- causal terms (E14, E16): token t moves in its own prefix's rate, the prefix held fixed; ``"auto"`` is
  ``κ_t = 1/L_t`` per position.

The CRATE pair, the descent guarantees and every option: ``docs/guide-derive.md``.
"""
from srr.derivation import variants
from srr.derivation.layer import DerivedLayer, derive
from srr.derivation.lipschitz import (BoundFraction, auto_step_size, coding_rate_step_size, compression_lipschitz,
                                  compression_step_size, is_causal, ista_step_size, lipschitz_bound,
                                  position_lipschitz_bound)
from srr.derivation.step import Step, derive_step

__all__ = [
    "derive_step", "derive", "Step", "DerivedLayer", "variants",
    "BoundFraction", "auto_step_size", "lipschitz_bound", "compression_lipschitz",
    "compression_step_size", "coding_rate_step_size", "ista_step_size", "position_lipschitz_bound", "is_causal",
]
