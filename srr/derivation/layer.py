"""``derive``: an ``nn.Module`` that runs derived steps, with the objective's parameters learnable.

The module owns the objective's parameters (``objective.requires``) as ``nn.Parameter``s:

| name | meaning | shape | initialisation |
| --- | --- | --- | --- |
| ``U`` | subspaces of ``R^c`` (E2) | ``(heads, dim, head_dim)`` | orthogonal: orthonormal, mutually orthogonal blocks |
| ``D`` | dictionary of ``LeastSquares`` (E10) | ``(dim, code_dim)`` | ``kaiming_uniform_`` as the public CRATE code |
| ``X`` | the signal of ``LeastSquares`` | — | not a parameter: the layer's input |

Optionally the step size κ (``learn_step_size``) and the weight λ of the non-smooth part
(``learn_lam``) are learnable too. Any other parameter must be given an initial value by name.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from srr._checks import check_choice, check_int
from srr.derivation.lipschitz import BoundFraction
from srr.derivation.step import StepSize, derive_step
from srr.objective import Objective, SeparablePenalty, Term


def _orthogonal_subspaces(heads: int, dim: int, head_dim: int) -> Tensor:
    W = nn.init.orthogonal_(torch.empty(dim, heads * head_dim))  # (d, K·p)
    return W.unflatten(1, (heads, head_dim)).permute(1, 0, 2).contiguous()  # (K, d, p)


def _public_dictionary(dim: int, code_dim: int) -> Tensor:
    return nn.init.kaiming_uniform_(torch.empty(dim, code_dim))  # (d, m); a=0 as model/crate.py


def _penalty_weight(objective: Objective) -> float:
    """λ₀: the total weight of the one kind of separable penalty in the non-smooth part."""
    penalties = [(c, t) for c, t in objective.nonsmooth_part().terms if isinstance(t, SeparablePenalty)]
    if not penalties or len({type(t) for _, t in penalties}) != 1:
        raise ValueError(f"learn_lam needs a non-smooth part with one kind of penalty (e.g. L1), got {objective}")
    lam = sum(c * t.lam for c, t in penalties)
    if lam <= 0:
        raise ValueError(f"learn_lam needs an initial penalty weight λ > 0 to scale, got λ = {lam} in {objective}")
    return lam


class DerivedLayer(nn.Module):
    """``forward(x) -> Z``: ``steps`` derived steps (``derive_step``) from ``Z₀ = x`` (``start="input"``)
    or ``Z₀ = 0`` (``start="zero"``, codes of width ``code_dim``), with ``X = x`` when the objective
    has a signal. ``x (..., N, dim)``; the output is the next tokens (or codes), or with
    ``output="update"`` the update ``Z − x`` that a residual block (CRATE's compression half-step) adds.
    """

    def __init__(self, objective: Term | Objective, step_size: StepSize, *, dim: int, heads: int | None = None,
                 head_dim: int | None = None, code_dim: int | None = None, steps: int = 1, start: str = "input",
                 learn_step_size: bool = False, learn_lam: bool = False, frozen=(), output: str = "tokens",
                 **init: Tensor):
        super().__init__()
        self.step = derive_step(objective, step_size)
        self.objective = self.step.objective
        check_int(dim, "dim", minimum=1, what="the token width d")
        check_int(steps, "steps", minimum=1)
        check_choice(start, "start", ("input", "zero"))  # Z₀ = x or Z₀ = 0
        self.output = check_choice(output, "output", ("tokens", "update"))  # Z⁺, or Z⁺ − x for a residual block
        self.dim, self.steps, self.start = dim, steps, start
        self.code_dim = dim if code_dim is None else int(code_dim)
        if start == "input" and self.code_dim != dim:
            raise ValueError(f"start='input' needs code_dim == dim (codes start at the input), got "
                             f"code_dim={code_dim}, dim={dim}")
        if output == "update" and self.code_dim != dim:
            raise ValueError(f"output='update' (Z⁺ − x) needs code_dim == dim, got code_dim={code_dim}, dim={dim}")
        if start == "zero" and "X" not in self.objective.requires:
            raise ValueError(f"start='zero' needs an objective with a signal X (e.g. LeastSquares), got "
                             f"{self.objective}")
        frozen = set(frozen)
        for name in self.objective.requires:
            if name == "X":
                continue
            value = init.pop(name, None)
            if value is None:
                value = self._initial(name, heads, head_dim)
            value = value.detach().clone()
            if name in frozen:
                self.register_buffer(name, value)
            else:
                self.register_parameter(name, nn.Parameter(value))
        if init:
            raise TypeError(f"unexpected initial value(s) {sorted(init)}: the objective {self.objective} takes "
                            f"{list(self.objective.requires)}")
        self.learn_step_size = bool(learn_step_size)
        if self.learn_step_size:
            if not isinstance(self.step.step_size, float):
                raise ValueError(f"learn_step_size needs a numeric initial step_size, got {step_size!r}")
            self.step_size = nn.Parameter(torch.tensor(self.step.step_size))
        self.lam0 = _penalty_weight(self.objective) if learn_lam else None
        if learn_lam:
            self.lam = nn.Parameter(torch.tensor(self.lam0))

    def _initial(self, name: str, heads, head_dim) -> Tensor:
        if name == "U":
            if heads is None:
                raise ValueError(f"objective {self.objective} has subspaces U: pass heads=K (and head_dim=p, default "
                                 f"dim // heads)")
            p = self.dim // heads if head_dim is None else head_dim
            if p < 1:
                raise ValueError(f"head_dim must be >= 1, got {p} (dim={self.dim}, heads={heads})")
            return _orthogonal_subspaces(heads, self.dim, p)
        if name == "D":
            return _public_dictionary(self.dim, self.code_dim)
        raise ValueError(f"no default initialisation for parameter {name!r} of {self.objective}: pass {name}=<tensor> "
                         f"to derive()")

    @property
    def subspaces(self) -> Tensor:
        """``U (K, d, p)`` of the compression term."""
        if "U" not in self.objective.requires:
            raise AttributeError(f"the objective {self.objective} has no subspaces U")
        return self.U

    @property
    def dictionary(self) -> Tensor:
        """``D (d, m)`` of the fidelity term."""
        if "D" not in self.objective.requires:
            raise AttributeError(f"the objective {self.objective} has no dictionary D")
        return self.D

    def objective_params(self, x: Tensor) -> dict[str, Tensor]:
        """The parameters the objective is evaluated with for input ``x``."""
        return {n: (x if n == "X" else getattr(self, n)) for n in self.objective.requires}

    def forward(self, x: Tensor) -> Tensor:  # (..., N, dim) -> (..., N, dim | code_dim)
        params = self.objective_params(x)
        Z = x if self.start == "input" else x.new_zeros(*x.shape[:-1], self.code_dim)
        kappa = self.step_size if self.learn_step_size else None
        scale = None if self.lam0 is None else self.lam.clamp_min(0) / self.lam0
        for i in range(self.steps):  # the first step from the input: Z = X = x (one matrix when linear)
            first = i == 0 and self.start == "input"
            Z = self.step.apply(Z, params, step_size=kappa, prox_scale=scale, at_signal=first)
        return Z - x if self.output == "update" else Z

    def extra_repr(self) -> str:
        s = self.step.step_size
        size = "auto" if isinstance(s, BoundFraction) and s.fraction == 1 else s
        return (f"objective={self.objective}, step_size={size}, steps={self.steps}, start={self.start!r}, "
                f"learn_step_size={self.learn_step_size}, learn_lam={self.lam0 is not None}"
                + (", output='update'" if self.output == "update" else ""))


def derive(objective: Term | Objective, step_size: StepSize = "auto", **options) -> DerivedLayer:
    """A :class:`DerivedLayer` for ``objective``: see the table in this module's docstring.

    Options (keyword-only): ``dim`` (required), ``heads``/``head_dim`` (for ``U``), ``code_dim``
    (width of the codes, default ``dim``), ``steps`` (default 1), ``start`` (``"input"`` or
    ``"zero"``), ``learn_step_size``, ``learn_lam``, ``frozen`` (names kept as buffers), ``output``
    (``"tokens"``: ``Z⁺``; ``"update"``: ``Z⁺ − x``, for a block's residual branch), and initial values
    by name (``U=...``, ``D=...``).

    >>> compress = derive(CompressedCodingRate(eps=0.5), step_size=0.1, dim=384, heads=6)   # Z − κ∇R^c(Z; U)
    >>> ista = derive(LeastSquares() + L1(lam=0.1) + NonNegative(), step_size=0.1, dim=384)  # (E10)
    """
    return DerivedLayer(objective, step_size, **options)

