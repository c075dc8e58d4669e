"""``Measurement``: the per-layer table that :func:`srr.measurement.measure` returns.

One row per (layer, site): R (E1), R^c (E2), ΔR (E3), the exact-zero fraction, ‖Z‖₀, ‖Z‖₁ and
μ_SRR (E4), each a mean over the measured samples. It prints as a rich table, saves as CSV or
JSON, and plots the layer-wise curves of the CRATE paper's figures (R^c — "compression" — and
sparsity against the layer index, YU23 Fig. 3–4), one line per site, as a PNG.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

__all__ = ["Measurement", "MeasurementRow", "SITES"]

# CRATE token sites of layer ℓ, in forward order: Z^ℓ (the MSSA input), Z^{ℓ+½}, Z^{ℓ+1}.
SITES = ("in", "half", "out")
# "mssa_in" was the first site's name, but the MSSA sees LN₁(Zℓ) (LayerTokens.mssa_input), not Zℓ: "in" now.
OLD_SITE_NAMES = {"mssa_in": "in"}


def site_name(site: str) -> str:
    """``site`` under its current name (an old name warns once per call site)."""
    if site in OLD_SITE_NAMES:
        import warnings

        warnings.warn(f"site {site!r} is now {OLD_SITE_NAMES[site]!r} (it is Z^l, the block input, not the MSSA "
                      f"input LN1(Z^l))", DeprecationWarning, stacklevel=3)
        return OLD_SITE_NAMES[site]
    return site


@dataclass(frozen=True)
class MeasurementRow:
    """One layer and site, values averaged over samples."""

    layer: int  # ℓ
    site: str  # "in" (Z^ℓ), "half" (Z^{ℓ+½}), "out" (Z^{ℓ+1}); for other models "out"
    module: str  # the module the tokens were read from
    R: float  # (E1) coding rate
    Rc: float  # (E2) compressed coding rate
    dR: float  # (E3) R − R^c
    zero_fraction: float  # fraction of exactly-zero entries
    l0: float  # ‖Z‖₀: non-zero entries of a token set
    l1: float  # ‖Z‖₁ of a token set
    srr: float  # (E4) μ_SRR = λ‖Z‖₀ + R^c − R
    Rc_var: float | None = None  # (E12) R^c_var with the layer's own membership Π: TSSA (tost) layers only

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class Measurement(Sequence):
    """Rows of :class:`MeasurementRow` plus ``info`` (ε, λ, number of samples, scope, model)."""

    def __init__(self, rows: Sequence[MeasurementRow], *, info: dict | None = None):
        self.rows = list(rows)
        self.info = dict(info or {})

    # ----- access -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]

    def __iter__(self) -> Iterator[MeasurementRow]:
        return iter(self.rows)

    @property
    def sites(self) -> list[str]:
        return list(dict.fromkeys(r.site for r in self.rows))

    def select(self, site: str) -> list[MeasurementRow]:
        """The rows of one site, in layer order."""
        site = site_name(site)
        rows = [r for r in self.rows if r.site == site]
        if not rows:
            raise ValueError(f"site must be one of {self.sites}, got {site!r}")
        return rows

    def column(self, name: str, site: str = "out") -> list[float]:
        """One column (e.g. ``"Rc"``) of one site, in layer order."""
        if name not in MeasurementRow.columns():
            raise ValueError(f"name must be one of {MeasurementRow.columns()}, got {name!r}")
        return [getattr(r, name) for r in self.select(site)]

    @property
    def srr(self) -> float:
        """Model-level μ_SRR (HU24 §5): the mean over layers of μ_SRR of each layer's output tokens."""
        values = self.column("srr", "out")
        return sum(values) / len(values)

    # ----- printing -----------------------------------------------------------------------
    def to_rich_table(self, *, title: str | None = None, digits: int = 4):
        from rich.table import Table

        table = Table(title=title or self._title())
        for name in MeasurementRow.columns():
            table.add_column(name, justify="left" if name in ("site", "module") else "right")
        for r in self.rows:
            table.add_row(*(_fmt(getattr(r, c), digits) for c in MeasurementRow.columns()))
        return table

    def __rich__(self):
        return self.to_rich_table()

    def _title(self) -> str:
        keys = ("model", "samples", "eps", "lam", "scope")
        parts = [f"{k}={self.info[k]}" for k in keys if k in self.info]
        return "SRR measurement" + (f" ({', '.join(parts)})" if parts else "")

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(file=io.StringIO(), width=160, color_system=None)
        console.print(self.to_rich_table())
        return console.file.getvalue()

    def __repr__(self) -> str:
        return f"Measurement({len(self.rows)} rows, sites={self.sites}, info={self.info})"

    # ----- saving -------------------------------------------------------------------------
    def to_csv(self, path: str | Path | None = None) -> str:
        """CSV text with a header row; written to ``path`` when given."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(MeasurementRow.columns())
        for r in self.rows:
            writer.writerow([getattr(r, c) for c in MeasurementRow.columns()])
        text = buffer.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_json(self, path: str | Path | None = None) -> str:
        """``{"info": {...}, "rows": [{...}, ...]}``; written to ``path`` when given."""
        text = json.dumps({"info": self.info, "rows": [asdict(r) for r in self.rows]}, indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> "Measurement":
        """Read what :meth:`to_json` wrote (a path or the JSON text itself)."""
        text = Path(source).read_text() if not str(source).lstrip().startswith("{") else str(source)
        data = json.loads(text)
        return cls([MeasurementRow(**row) for row in data["rows"]], info=data.get("info"))

    def plot(self, path: str | Path, *, columns: Sequence[str] = ("Rc", "zero_fraction", "R", "srr")) -> Path:
        """Layer-wise curves as a PNG: one panel per column, one line per site (Agg backend)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        titles = {"Rc": "compression: $R^c(Z;U)$", "zero_fraction": "sparsity: fraction of zeros",
                  "R": "coding rate $R(Z)$", "srr": r"$\mu_{SRR}$", "dR": r"$\Delta R$",
                  "l1": r"$\|Z\|_1$", "l0": r"$\|Z\|_0$"}
        units = {"Rc": "nats", "R": "nats", "dR": "nats", "srr": "λ‖Z‖₀ + Rᶜ − R", "zero_fraction": "fraction",
                 "l1": "sum of |z|", "l0": "count"}
        explained = {"in": r"in: $Z^\ell$, the layer's input", "half": r"half: $Z^{\ell+1/2}$, after MSSA",
                     "out": r"out: $Z^{\ell+1}$, after ISTA"}
        fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.8), squeeze=False)
        for ax, name in zip(axes[0], columns):
            for site in self.sites:
                rows = self.select(site)
                ax.plot([r.layer for r in rows], [getattr(r, name) for r in rows], marker="o",
                        label=explained.get(site, site))
            ax.set_title(titles.get(name, name))
            ax.set_xlabel("layer ℓ (0-based)")
            ax.set_ylabel(f"{name} ({units.get(name, 'value')})")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, title="token site")
        fig.suptitle(self._title(), fontsize=9)
        fig.tight_layout(rect=(0, 0.12, 1, 1))
        path = Path(path)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _fmt(value, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)
