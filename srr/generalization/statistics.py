"""Rank statistics for judging a complexity measure against the generalization gap (HU24 §5).

- ``kendall_tau``      τ(μ, g): Kendall's rank correlation over all pairs of models.
- ``granulated_psi``   Ψ = (1/n) Σ_i ψ_i, ψ_i = mean τ over groups in which only θ_i varies.
- ``compare_measures`` one ``GranulatedKendall`` per measure (``comparison_rows``, ``to_rich_table``, ``to_csv``).

A measure predicts generalization when τ(μ, g) > 0. Sources, sign convention and the table format:
``docs/guide-generalization.md``, section ``srr/generalization/statistics.py``.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

__all__ = [
    "GranulatedKendall",
    "comparison_rows",
    "compare_measures",
    "granulated_psi",
    "kendall_tau",
    "to_csv",
    "to_rich_table",
]

Ties = Literal["a", "b"]
_PAIR_BLOCK = 1 << 22  # pair comparisons held in memory at once by kendall_tau


# --------------------------------------------------------------------------- Kendall's τ

def _as_vector(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a 1-D sequence of numbers, got {type(values).__name__}") from error
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per model), got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError(f"{name} must not contain NaN (its rank is undefined), got NaN at positions "
                         f"{np.flatnonzero(np.isnan(array)).tolist()}")
    return array


def _pair_counts(x: np.ndarray, y: np.ndarray) -> tuple[int, int, int]:
    """``(S, T_x, T_y)`` over unordered pairs i < j.

    S = n_c − n_d = Σ sign(x_i − x_j)·sign(y_i − y_j); T_x, T_y = pairs tied in x, in y.
    Signs come from comparisons, not differences, so ±inf values rank correctly.
    """
    n = len(x)
    S = T_x = T_y = 0
    rows = max(1, _PAIR_BLOCK // max(n, 1))
    cols = np.arange(n)
    for start in range(0, n, rows):
        block = slice(start, min(start + rows, n))
        upper = cols[None, :] > cols[block, None]  # (rows, n): keep pairs i < j only
        sx = (x[block, None] > x[None, :]).astype(np.int8) - (x[block, None] < x[None, :])  # (rows, n)
        sy = (y[block, None] > y[None, :]).astype(np.int8) - (y[block, None] < y[None, :])
        S += int((sx.astype(np.int64) * sy)[upper].sum())
        T_x += int(((sx == 0) & upper).sum())
        T_y += int(((sy == 0) & upper).sum())
    return S, T_x, T_y


def kendall_tau(x, y, *, ties: Ties = "b") -> float:
    """Kendall's rank correlation between paired values ``x[k]``, ``y[k]`` (one pair per model).

    With n_0 = n(n−1)/2 pairs, n_c / n_d the concordant / discordant pairs, and n_1, n_2 the
    pairs tied in x, in y (a pair tied in either counts as neither concordant nor discordant):

    - ``ties="b"`` (default) τ_b = (n_c − n_d) / √((n_0 − n_1)(n_0 − n_2)), corrected for ties;
      equal to ``scipy.stats.kendalltau(x, y)`` (its default variant).
    - ``ties="a"``           τ_a = (n_c − n_d) / n_0. This is Jiang et al.'s definition,
      τ = Σ_{pairs} sign(μ_1 − μ_2)·sign(g_1 − g_2) / (|T|(|T|−1)) over ordered pairs, where
      ties contribute 0 but still count in the denominator.

    Without ties the two agree. Called as ``kendall_tau(measure, gap)``, τ > 0 means the measure
    predicts generalization (a larger measure goes with a larger gap).

    Args:
        x, y: 1-D sequences, numpy arrays or tensors of equal length n; ±inf allowed, NaN not.
        ties: ``"b"`` or ``"a"``, as above.

    Returns:
        τ in [−1, 1] as a float; ``nan`` when undefined: n < 2, or (τ_b only) all of ``x`` or all
        of ``y`` tied.
    """
    if ties not in ("a", "b"):
        raise ValueError(f"ties must be 'a' or 'b', got {ties!r}")
    x, y = _as_vector(x, "x"), _as_vector(y, "y")
    if len(x) != len(y):
        raise ValueError(f"x and y must pair up (same length), got lengths {len(x)} and {len(y)}")
    n = len(x)
    if n < 2:
        return math.nan
    S, T_x, T_y = _pair_counts(x, y)
    n0 = n * (n - 1) // 2
    if ties == "a":
        return S / n0
    denominator = (n0 - T_x) * (n0 - T_y)
    if denominator == 0:
        return math.nan
    return max(-1.0, min(1.0, S / math.sqrt(denominator)))


# --------------------------------------------------------------------------- granulated Ψ

@dataclass(frozen=True)
class GranulatedKendall:
    """How one measure ranks a grid of models against their gap (Jiang et al.'s τ, ψ_i, Ψ).

    Attributes:
        measure: the table column scored.
        tau: τ over all models in the table.
        psi: ψ_i per hyperparameter i, in the order given: mean τ over the groups in which only
            θ_i varies (``nan`` when no group was usable).
        Psi: Ψ = mean of ``psi`` over hyperparameters (``nan`` if any ψ_i is ``nan``).
        groups: per hyperparameter, the number of groups averaged into ψ_i.
        skipped: per hyperparameter, the number of groups left out (see ``granulated_psi``).
        n_models: rows in the table.
    """

    measure: str
    tau: float
    psi: dict[str, float] = field(default_factory=dict)
    Psi: float = math.nan
    groups: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    n_models: int = 0

    def row(self) -> dict[str, str | float]:
        """``{"measure", "tau", "psi[<i>]" for each i, "Psi"}`` — one printable row."""
        psi = {f"psi[{k}]": v for k, v in self.psi.items()}
        return {"measure": self.measure, "tau": self.tau, **psi, "Psi": self.Psi}


def _column(table: Sequence[Mapping], key: str, name: str, *, numeric: bool) -> list:
    values = []
    for index, row in enumerate(table):
        if not isinstance(row, Mapping):
            raise TypeError(f"table must be a sequence of mappings (one per model), row {index} is "
                            f"{type(row).__name__}")
        if key not in row:
            raise ValueError(f"{name} {key!r} is missing from table row {index} (keys: {sorted(map(str, row))})")
        value = row[key]
        if numeric:
            try:
                value = float(value.item() if isinstance(value, torch.Tensor) else value)
            except (TypeError, ValueError) as error:
                raise TypeError(f"{name} {key!r} must be a number in every row, row {index} has {value!r}") from error
            if math.isnan(value):
                raise ValueError(f"{name} {key!r} is NaN in table row {index}; drop or fix that model first")
        elif isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()  # tensors hash by identity; group by value
        elif not isinstance(value, Hashable):
            raise TypeError(f"hyperparameter {key!r} must have hashable values, row {index} has {type(value).__name__}")
        values.append(value)
    return values


def granulated_psi(
    table: Sequence[Mapping],
    measure: str,
    *,
    gap: str = "gap",
    hyperparameters: Sequence[str],
    ties: Ties = "b",
) -> GranulatedKendall:
    """Granulated Kendall coefficient of ``measure`` against ``gap`` (Jiang et al. 2019).

    For each hyperparameter i, models are grouped by the values of all the *other*
    hyperparameters, so that within a group only θ_i varies, and

        ψ_i = (1/m_i) Σ_{groups} τ(μ, g restricted to the group),    Ψ = (1/n) Σ_i ψ_i,

    with m_i the number of groups used. Models sharing every hyperparameter (e.g. seeds) fall in
    the same group. A group is *skipped* (counted in ``skipped``, left out of m_i) when it holds
    fewer than 2 models, when θ_i takes a single value in it (an incomplete grid), or when τ is
    undefined in it (``nan``: with τ_b, all its measure or all its gap values tied). ψ_i is
    ``nan`` if every group of i was skipped, and then Ψ is ``nan`` too.

    Args:
        table: one mapping per trained model holding ``measure``, ``gap`` and every name in
            ``hyperparameters``. Measure and gap values are numbers (or 0-d tensors); hyperparameter
            values are anything hashable.
        measure: the column holding the complexity measure.
        gap: the column holding the generalization gap.
        hyperparameters: the grid's axes, in the order ψ is reported. Each must take at least two
            values in the table (leave fixed ones out, e.g. width when analysing width 384 only).
        ties: Kendall variant, see ``kendall_tau``.
    """
    if isinstance(hyperparameters, str):
        raise TypeError(f"hyperparameters must be a sequence of column names, got the string {hyperparameters!r}")
    hyperparameters = list(hyperparameters)
    if not hyperparameters:
        raise ValueError("hyperparameters must name at least one column, got an empty sequence")
    if len(set(hyperparameters)) != len(hyperparameters):
        raise ValueError(f"hyperparameters must be distinct, got {hyperparameters}")
    for name in (measure, gap):
        if name in hyperparameters:
            raise ValueError(f"{name!r} is listed as a hyperparameter and also scored as measure/gap")
    if len(table) == 0:
        raise ValueError("table must hold at least one model, got an empty table")

    mu = np.array(_column(table, measure, "measure", numeric=True))
    g = np.array(_column(table, gap, "gap", numeric=True))
    theta = {h: _column(table, h, "hyperparameter", numeric=False) for h in hyperparameters}
    for h, values in theta.items():
        if len(set(values)) < 2:
            raise ValueError(
                f"hyperparameter {h!r} must take at least 2 values in the table to vary within a group, "
                f"got only {sorted(set(values), key=repr)}; leave it out of hyperparameters"
            )

    psi, groups, skipped = {}, {}, {}
    for h in hyperparameters:
        others = [o for o in hyperparameters if o != h]
        members: dict[tuple, list[int]] = {}
        for k in range(len(table)):
            members.setdefault(tuple(theta[o][k] for o in others), []).append(k)
        taus = []
        for rows in members.values():
            if len(rows) < 2 or len({theta[h][k] for k in rows}) < 2:
                continue
            t = kendall_tau(mu[rows], g[rows], ties=ties)
            if not math.isnan(t):
                taus.append(t)
        psi[h] = float(np.mean(taus)) if taus else math.nan
        groups[h] = len(taus)
        skipped[h] = len(members) - len(taus)

    return GranulatedKendall(
        measure=measure,
        tau=kendall_tau(mu, g, ties=ties),
        psi=psi,
        Psi=float(np.mean(list(psi.values()))),
        groups=groups,
        skipped=skipped,
        n_models=len(table),
    )


# --------------------------------------------------------------------------- comparison tables

def compare_measures(
    table: Sequence[Mapping],
    measures: Sequence[str],
    *,
    gap: str = "gap",
    hyperparameters: Sequence[str],
    ties: Ties = "b",
) -> list[GranulatedKendall]:
    """``granulated_psi`` for each column in ``measures``, in the order given (HU24 §5's table).

    Print with ``to_rich_table``, save with ``to_csv``, or take plain rows from
    ``comparison_rows``.
    """
    if isinstance(measures, str):
        raise TypeError(f"measures must be a sequence of column names, got the string {measures!r}")
    if not measures:
        raise ValueError("measures must name at least one column, got an empty sequence")
    return [granulated_psi(table, m, gap=gap, hyperparameters=hyperparameters, ties=ties) for m in measures]


def comparison_rows(results: Sequence[GranulatedKendall]) -> tuple[list[str], list[list]]:
    """``(header, rows)``: columns ``measure, tau, psi[<i>]..., Psi``, one row per result.

    The ψ columns are the union over results in first-seen order; a missing one is ``nan``.
    """
    names: list[str] = []
    for r in results:
        names += [h for h in r.psi if h not in names]
    header = ["measure", "tau", *(f"psi[{h}]" for h in names), "Psi"]
    rows = [[r.measure, r.tau, *(r.psi.get(h, math.nan) for h in names), r.Psi] for r in results]
    return header, rows


def to_rich_table(results: Sequence[GranulatedKendall], *, title: str | None = None, digits: int = 3):
    """A ``rich.table.Table`` of ``comparison_rows(results)``, numbers to ``digits`` decimals."""
    from rich.table import Table

    header, rows = comparison_rows(results)
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("τ", justify="right")
    for name in header[2:-1]:
        table.add_column(f"ψ{name[len('psi'):]}", justify="right")  # "psi[lr]" -> "ψ[lr]"
    table.add_column("Ψ", justify="right")
    for row in rows:
        table.add_row(row[0], *(f"{v:.{digits}f}" for v in row[1:]))
    return table


def to_csv(results: Sequence[GranulatedKendall], file=None) -> str:
    """Write ``comparison_rows(results)`` as CSV (full float precision) and return the text.

    ``file`` is a path, an open text file, or ``None`` (only return the text).
    """
    header, rows = comparison_rows(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[row[0], *(repr(float(v)) for v in row[1:])] for row in rows])
    text = buffer.getvalue()
    if file is None:
        return text
    if hasattr(file, "write"):
        file.write(text)
    else:
        with open(file, "w", newline="") as handle:
            handle.write(text)
    return text
