"""Experiment 1 — the decompression toy (Hu et al. 2024, Fig. 1; MATH.md §4.1).

Twelve attention-only layers (no LayerNorm, no ISTA, no learning) applied to Gaussian tokens
``Z⁰ = s·G`` (``G`` with i.i.d. N(0, 1) entries, N = 196 tokens, d = 384) with one fixed
orthonormal basis ``U = [U_1 … U_K]`` of R^d split into K = 6 blocks of p = 64 columns
(``U (K, d, p)``, ``A_k = Z U_k``). Each layer is one of the updates that the papers discuss,
in the row form of MATH.md:

- ``exact``         ``Z − κ ∇R^c(Z)`` (E6), κ = 1/L from the Lipschitz bound (E7): a descent step.
- ``second_order``  ``Z + κ β² Σ_k (A_k A_kᵀ) A_k U_kᵀ``: the second-order term of the Neumann
                    expansion ``(I + β A Aᵀ)⁻¹ ≈ I − β A Aᵀ`` of (E6), alone, stepped with the sign
                    of the paper's derivation (HU24 eqs. 5–10), same κ.
- ``crate_c``       ``Z + c · o W``  (literal derivation, W = Uᵀ the (K·p)×d qkv weight)
- ``crate_n``       ``Z − c · o W``  (sign fixed)
- ``crate_t``       ``Z + c · o Wᵀ`` (transpose)
  with ``o = concat_k softmax(τ A_k A_kᵀ) A_k`` (E8), τ = p^{-1/2}, c = 1 (the public code's
  residual ``Z + MSSA(Z)`` with no extra scale; ``CRATEConfig.compression_step_size``).

R^c (E2) is measured with the same U and ε after every layer. Two sweeps: the input scale s
for every update, and the softmax temperature τ (as a multiple of p^{-1/2}) × s for the three
softmax updates, recording where each one lowers R^c (compresses) or raises it (decompresses).

Run: ``python -m experiments.decompression`` (about a minute on 2 CPU cores) or ``--quick``.
Writes ``layers.csv`` (R^c per layer, per seed), ``sweep.csv``, ``summary.json``,
``decompression.png`` and ``sweep.png``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from experiments._common import markdown_table, parse_args, pyplot, seed_everything, summary, write_csv, write_json
from srr.data.subspaces import random_subspaces
from srr.derivation.lipschitz import compression_step_size
from srr.layers import MSSA, ExactCompression
from srr.rates import compressed_coding_rate

NAME = "decompression"
UPDATES = ("exact", "second_order", "crate_c", "crate_n", "crate_t")
SOFTMAX_UPDATES = ("crate_c", "crate_n", "crate_t")
RATIO_FLOOR = 1e-6  # plotted in place of R^c ratios below it (R^c reaches 0 when tokens collapse)
DIVERGED = 1e150  # a token norm above this counts as divergence (float64 overflows soon after)


@dataclass(frozen=True)
class ToySetting:
    """The toy's sizes and constants (defaults: HU24's N, d, K, depth; ε from ``CRATEConfig``)."""

    tokens: int = 196  # N
    dim: int = 384  # d
    heads: int = 6  # K, with p = d / K
    depth: int = 12  # attention-only layers
    eps: float = 0.5  # ε of R^c (never ε²)
    scale: float = 1.0  # s, the std of the Gaussian input entries
    temperature_factor: float = 1.0  # τ = temperature_factor · p^{-1/2}
    softmax_step: float = 1.0  # c of the softmax updates

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


def project(Z: Tensor, U: Tensor) -> Tensor:
    """``A_k = Z U_k``: ``(N, d), (K, d, p) -> (K, N, p)``."""
    return torch.einsum("nd,kdp->knp", Z, U)


def second_order_update(Z: Tensor, U: Tensor, eps: float, step_size: float) -> Tensor:
    """``κ β² Σ_k (A_k A_kᵀ) A_k U_kᵀ``: the second-order Neumann term of −κ∇R^c (E6), alone, with
    the sign of the paper's derivation (HU24 eqs. 5–10). ``(N, d), (K, d, p) -> (N, d)``."""
    A = project(Z, U)  # (K, N, p)
    beta = U.shape[-1] / (Z.shape[-2] * eps**2)
    return step_size * beta**2 * ((A @ A.mT @ A) @ U.mT).sum(0)  # Σ_k (A_k A_kᵀ) A_k U_kᵀ: (N, d)


def make_updates(U: Tensor, setting: ToySetting) -> dict[str, Callable[[Tensor], Tensor]]:
    """The five layer maps ``Z -> Z⁺`` of the module docstring, for fixed ``U (K, d, p)``.

    ``exact`` and the softmax updates are the library's :class:`srr.layers.MSSA` (``step``) with
    its ``qkv`` weight set to ``W = Uᵀ``; only ``second_order`` is written here (no model uses it).
    """
    K, d, p = U.shape
    kappa = compression_step_size(U, setting.eps, setting.tokens)  # (E7) 1/L, computed once: U is fixed
    W = U.permute(1, 0, 2).reshape(d, K * p).T  # (K·p, d): the qkv weight, U_k = W_kᵀ

    def layer(cls=MSSA, **kwargs) -> MSSA | ExactCompression:
        mssa = cls(d, heads=K, head_dim=p, **kwargs).to(U.dtype)
        with torch.no_grad():
            mssa.qkv.weight.copy_(W)
        return mssa.eval()

    maps = {"exact": layer(ExactCompression, eps=setting.eps, step_size=kappa).step}
    for name in SOFTMAX_UPDATES:
        maps[name] = layer(output=name, temperature=setting.temperature_factor * p**-0.5,
                           step_size=setting.softmax_step).step
    maps["second_order"] = lambda Z: Z + second_order_update(Z, U, setting.eps, kappa)
    return maps


def trajectory(update: Callable[[Tensor], Tensor], Z: Tensor, U: Tensor, setting: ToySetting) -> list[dict]:
    """R^c and the token norm at layers 0..depth; stops (rows marked ``diverged``) on overflow."""
    rows, norm0 = [], float(Z.norm())
    for layer in range(setting.depth + 1):
        if layer:
            Z = update(Z)
        norm = float(Z.norm())
        if not math.isfinite(norm) or norm > DIVERGED:
            rows += [{"layer": ell, "rc": math.inf, "norm_ratio": math.inf, "diverged": True}
                     for ell in range(layer, setting.depth + 1)]
            break
        rc = float(compressed_coding_rate(Z, U, setting.eps))
        rows.append({"layer": layer, "rc": rc, "norm_ratio": norm / norm0, "diverged": False})
    return rows


def run_setting(setting: ToySetting, seed: int, updates: Sequence[str] = UPDATES) -> dict[str, list[dict]]:
    """Every update's trajectory from one Gaussian input and one basis drawn with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    basis = random_subspaces(1, setting.dim, setting.dim, generator=g, dtype=torch.float64)[0]  # (d, d) orthogonal
    U = basis.T.reshape(setting.heads, setting.head_dim, setting.dim).mT.contiguous()  # (K, d, p), blocks of columns
    Z0 = setting.scale * torch.randn(setting.tokens, setting.dim, generator=g, dtype=torch.float64)  # (N, d)
    maps = make_updates(U, setting)
    with torch.no_grad():
        return {name: trajectory(maps[name], Z0, U, setting) for name in updates}


def verdict(rows: list[dict]) -> str:
    """``compresses`` / ``decompresses`` (R^c at the last layer vs the input), or ``diverges``."""
    if rows[-1]["diverged"]:
        return "diverges"
    return "compresses" if rows[-1]["rc"] < rows[0]["rc"] else "decompresses"


def main(argv=None) -> dict:
    args = parse_args(NAME, __doc__, argv)
    return _run(args, time.perf_counter())


def _run(args, started) -> dict:
    if args.quick:
        base = ToySetting(tokens=32, dim=48, heads=6, depth=4)
        seeds, scales, temps = [args.seed], [0.1, 1.0], [1.0, 16.0]
    else:
        base = ToySetting()
        seeds = [args.seed + i for i in range(5)]
        scales = [float(s) for s in np.logspace(-2, 1, 13)]
        temps = [1 / 16, 1 / 4, 1.0, 4.0, 16.0]
    seed_everything(args.seed)

    # 1) HU24's figure: R^c per layer, each update, at the base setting (several seeds).
    layer_rows = []
    for seed in seeds:
        for name, rows in run_setting(base, seed).items():
            layer_rows += [{"update": name, "seed": seed, **r} for r in rows]
    write_csv(args.out / "layers.csv", layer_rows)

    # 2) Sweeps: input scale (all updates) × temperature (softmax updates), first seed.
    sweep_rows = []
    for scale in scales:
        for factor in temps:
            setting = ToySetting(**{**base.__dict__, "scale": scale, "temperature_factor": factor})
            names = UPDATES if factor == 1.0 else SOFTMAX_UPDATES
            for name, rows in run_setting(setting, seeds[0], names).items():
                first, last = rows[0], rows[-1]
                sweep_rows.append({"update": name, "scale": scale, "temperature_factor": factor,
                                   "rc_in": first["rc"], "rc_out": last["rc"], "rc_change": last["rc"] - first["rc"],
                                   "layers_lowering_rc": _layers_lowering(rows), "norm_ratio_out": last["norm_ratio"],
                                   "verdict": verdict(rows)})
    write_csv(args.out / "sweep.csv", sweep_rows)

    table = _base_table(layer_rows, base.depth)
    (args.out / "table.md").write_text(markdown_table(table, ["update", "rc_layer0", "rc_last", "change",
                                                               "layers_lowering_rc", "norm_ratio", "verdict"],
                                                      {"rc_layer0": ".1f", "rc_last": ".1f", "change": "+.1f",
                                                       "norm_ratio": ".3g"}))
    _plot_layers(layer_rows, base, args.out / "decompression.png")
    _plot_sweep(sweep_rows, scales, temps, base, args.out / "sweep.png")
    payload = summary(NAME, args, started, setting=base.__dict__, seeds=seeds, scales=scales,
                      temperature_factors=temps, table=table)
    write_json(args.out / "summary.json", payload)
    return payload


def _layers_lowering(rows: list[dict]) -> int:
    return sum(1 for a, b in zip(rows, rows[1:]) if not b["diverged"] and b["rc"] < a["rc"])


def _base_table(layer_rows: list[dict], depth: int) -> list[dict]:
    """Per update: mean over seeds of R^c at layer 0 and at the last layer, and the verdicts."""
    table = []
    for name in UPDATES:
        by_seed: dict[int, list[dict]] = {}
        for r in layer_rows:
            if r["update"] == name:
                by_seed.setdefault(r["seed"], []).append(r)
        runs = list(by_seed.values())
        verdicts = sorted({verdict(rows) for rows in runs})
        finite_last = [rows[-1]["rc"] for rows in runs]
        table.append({"update": name, "rc_layer0": float(np.mean([rows[0]["rc"] for rows in runs])),
                      "rc_last": float(np.mean(finite_last)),
                      "change": float(np.mean(finite_last) - np.mean([rows[0]["rc"] for rows in runs])),
                      "layers_lowering_rc": f"{min(map(_layers_lowering, runs))}–{max(map(_layers_lowering, runs))} "
                                            f"of {depth}",
                      "norm_ratio": float(np.mean([rows[-1]["norm_ratio"] for rows in runs])),
                      "verdict": "/".join(verdicts)})
    return table


LABELS = {"exact": "exact gradient step (E6)", "second_order": "second-order term only",
          "crate_c": "CRATE-C (+oW)", "crate_n": "CRATE-N (−oW)", "crate_t": "CRATE-T (+oWᵀ)"}


def _plot_layers(layer_rows, base: ToySetting, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in UPDATES:
        curves = {}
        for r in layer_rows:
            if r["update"] == name and not r["diverged"] and r["rc"] > 0:
                curves.setdefault(r["layer"], []).append(r["rc"])
        layers = sorted(curves)
        mean = [np.mean(curves[layer]) for layer in layers]
        std = [np.std(curves[layer]) for layer in layers]
        line, = ax.plot(layers, mean, marker="o", ms=3, label=LABELS[name])
        ax.fill_between(layers, np.subtract(mean, std), np.add(mean, std), color=line.get_color(), alpha=0.2)
        if layers[-1] < base.depth:
            ax.annotate("overflow", (layers[-1], mean[-1]), textcoords="offset points", xytext=(4, 0), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("layer ℓ")
    ax.set_ylabel("R^c(Z^ℓ; U)  (E2, log scale)")
    ax.set_title(f"N={base.tokens}, d={base.dim}, K={base.heads}, ε={base.eps}, input std {base.scale:g}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_sweep(sweep_rows, scales, temps, base, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    ax = axes[0]
    for name in UPDATES:
        pts = [(r["scale"], max(r["rc_out"] / r["rc_in"], RATIO_FLOOR)) for r in sweep_rows
               if r["update"] == name and r["temperature_factor"] == 1.0]
        xs = [s for s, v in pts if math.isfinite(v)]
        ax.plot(xs, [v for _, v in pts if math.isfinite(v)], marker="o", ms=3, label=LABELS[name])
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set(xscale="log", yscale="log", xlabel="input std s", ylabel=f"R^c(Z^{base.depth}) / R^c(Z^0)",
           title=f"τ = p^-1/2 (missing: overflow; floor {RATIO_FLOOR:g})")
    ax.legend(fontsize=6)
    for ax, name in zip(axes[1:], SOFTMAX_UPDATES):
        grid = np.full((len(temps), len(scales)), np.nan)
        for r in sweep_rows:
            if r["update"] == name and math.isfinite(r["rc_out"]):
                ratio = max(r["rc_out"] / r["rc_in"], RATIO_FLOOR)  # R^c can reach 0: tokens collapsed
                grid[temps.index(r["temperature_factor"]), scales.index(r["scale"])] = math.log10(ratio)
        lim = np.nanmax(np.abs(grid)) or 1.0
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim)
        ax.set_xticks(range(len(scales))[::3], [f"{s:.2g}" for s in scales][::3])
        ax.set_yticks(range(len(temps)), [f"{t:g}" for t in temps])
        ax.set(xlabel="input std s", ylabel="τ / p^-1/2", title=f"{LABELS[name]}: log10 R^c ratio")
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.suptitle("blue: compresses (R^c falls over the layers); red: decompresses", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
