"""``srr derive OBJECTIVE``: an objective from the command line, the layer derived from it, and a
check of its descent property on random inputs (MATH.md §3–4: E7, E11).

The layer is one proximal-gradient step ``Z⁺ = prox_{κg}(Z − κ∇f(Z))`` (``srr.derive``), f the
smooth part, g the non-smooth part. With ``κ ≤ 1/L`` (``--step-size auto``) the descent lemma
says ``F(Z⁺) ≤ F(Z)`` for ``F = f + g`` from any feasible start; the check draws random token sets
(non-negative when the objective holds ``NonNeg``) and random parameters, and counts the trials
in which F did not increase.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
import typer
from rich.table import Table

from .errors import USAGE, fail, stdout, user_errors


@dataclass(frozen=True)
class DescentCheck:
    trials: int
    held: int  # trials with F(Z⁺) <= F(Z) (up to rounding)
    mean_before: float
    mean_after: float
    worst_increase: float  # max over trials of F(Z⁺) − F(Z); <= 0 when descent held everywhere

    @property
    def ok(self) -> bool:
        return self.held == self.trials


def check_descent(layer, *, tokens: int, trials: int, seed: int, dtype=torch.float64) -> DescentCheck:
    """F before and after one step of ``layer`` (a ``srr.derivation.DerivedLayer``) on random inputs."""
    from srr.objective import NonNegative

    generator = torch.Generator().manual_seed(seed)
    layer = layer.to(dtype)
    Z = torch.randn(trials, tokens, layer.dim, generator=generator, dtype=dtype)  # (T, N, d)
    if any(isinstance(t, NonNegative) for _, t in layer.objective.terms):
        Z = Z.abs()  # a feasible start: ι(Z ≥ 0) = 0
    with torch.no_grad():
        params = layer.objective_params(Z)
        before = layer.objective(Z, **params)  # (T,)
        after = layer.objective(layer(Z), **params)  # (T,), same signal X = Z
    slack = 1e-9 * (before.abs() + 1)
    increase = after - before
    return DescentCheck(trials=trials, held=int((increase <= slack).sum()), mean_before=before.mean().item(),
                        mean_after=after.mean().item(), worst_increase=increase.max().item())


def _step_size(text: str):
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise fail(f"--step-size must be 'auto' or a finite number > 0, got {text!r}", USAGE)
    return value


def derive_command(
    objective: Annotated[str, typer.Argument(metavar="OBJECTIVE", help="The objective, e.g. \"Rc(eps=0.5) + 0.1*L1 + "
                                                                       "NonNeg\". Terms: R, Rc, L1, L0, L2, NonNeg, "
                                                                       "LeastSquares.")],
    step_size: Annotated[str, typer.Option(
        help="κ: 'auto' (1/L from the Lipschitz bounds E7, E11) or a number.")] = "auto",
    dim: Annotated[int, typer.Option(help="Token width d of the random inputs.")] = 16,
    heads: Annotated[int, typer.Option(help="Subspaces K (for Rc).")] = 4,
    tokens: Annotated[int, typer.Option(help="Tokens N per random token set.")] = 32,
    trials: Annotated[int, typer.Option(help="Random token sets in the descent check.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs and parameters.")] = 0,
) -> None:
    """Print an objective, the layer derived from it, and check that one step never increases it."""
    from srr.derivation import derive
    from srr.objective import parse

    kappa = _step_size(step_size)
    with user_errors(USAGE):
        for name, value in (("dim", dim), ("heads", heads), ("tokens", tokens), ("trials", trials)):
            if value < 1:
                raise ValueError(f"--{name} must be a positive integer, got {value}")
        if seed < 0:
            raise ValueError(f"--seed must be an integer >= 0, got {seed}")
        parsed = parse(objective)
        torch.manual_seed(seed)
        needs_heads = "U" in parsed.requires
        if needs_heads and dim % heads:
            raise ValueError(f"--dim ({dim}) must be divisible by --heads ({heads}) for the subspaces U")
        layer = derive(parsed, kappa, dim=dim, **({"heads": heads} if needs_heads else {}))
        # an objective that cannot be stepped (e.g. 0*R: no Lipschitz bound for κ = 'auto') is a bad OBJECTIVE too
        check = check_descent(layer, tokens=tokens, trials=trials, seed=seed)
    smooth, nonsmooth = parsed.smooth_part(), parsed.nonsmooth_part()
    console = stdout()
    table = Table(title="srr derive", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("objective F", str(parsed))
    table.add_row("parsed as", parsed.spec())
    table.add_row("LaTeX", parsed.latex())
    table.add_row("smooth part f", str(smooth) if smooth.terms else "0 (none)")
    table.add_row("non-smooth part g", str(nonsmooth) if nonsmooth.terms else "0 (none)")
    step = "Z⁺ = prox_{κg}(Z − κ∇f(Z))" if nonsmooth.terms else "Z⁺ = Z − κ∇f(Z)"
    if nonsmooth.terms and not smooth.terms:
        step = "Z⁺ = prox_{κg}(Z)"
    table.add_row("derived layer", f"{step}, κ = {'1/L' if kappa == 'auto' else kappa}")
    table.add_row("module", repr(layer).replace("\n", " "))
    shapes = ", ".join(f"{n} {tuple(p.shape)}" for n, p in layer.named_parameters()) or "none"
    table.add_row("parameters", shapes)
    verdict = (f"[green]holds[/] in {check.held}/{check.trials} trials" if check.ok
               else f"[red]fails[/] in {check.trials - check.held}/{check.trials} trials "
                    f"(worst increase {check.worst_increase:.3g})")
    table.add_row("descent F(Z⁺) ≤ F(Z)", verdict)
    table.add_row("mean F before → after", f"{check.mean_before:.6g} → {check.mean_after:.6g}")
    table.add_row("random inputs", f"{check.trials} token sets of N={tokens}, d={dim}, seed {seed}, float64")
    console.print(table)
    if not check.ok:
        raise typer.Exit(code=1)
