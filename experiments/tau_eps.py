"""Experiment — Kendall τ of μ_SRR against the generalization gap as a function of ε, re-scored without retraining
(issue 22 §2; MATH.md §1–2, §5).

Reads ``models.csv`` of ``experiments/generalization.py`` and, for every model with an eigenvalue file
(``eig_file``, ``experiments/_spectra.py``), computes at each ε of a log grid (``--points``, default 41, from
1e-2 to 1e2, plus ε = 0.1, 1, √(p/N) and √(d/N)) the exact

- μ_SRR(ε) = mean over layers of λ‖Z‖₀ + R^c − R (HU24 eq. 11, λ = 0.1, raw tokens, each layer's own U),
- its rate half R^c − R, and R^c alone,

and Kendall's τ (τ_a, no tie correction, as ``kendall.md``) of each against the gap of the model whose
eigenvalues are stored (``eig_gap``), per width and seed, and per width over both seeds. The noise ceiling of a
width is τ between its two seeds' ``eig_gap`` (once both seeds of the width have eigenvalues).

Why τ depends on ε: log(1 + αλ) ≈ log α + log λ where αλ ≫ 1 (the rate counts the rank and the log-spectrum)
and ≈ αλ where αλ ≪ 1 (the rate is a squared Frobenius norm, ∝ 1/ε²); ``tau_eps_floor.csv`` gives, per ε, the
share of the stored eigenvalues above the floor (αλ > 1 for R, βλ > 1 for R^c), averaged over models and layers.

Checks: at ε = 0.1, √(p/N) and 1 the re-scored μ_SRR must reproduce the row's own ``srr`` columns (models whose
row and eigenvalues come from the same training); the largest difference is in the summary.

Run: ``python -m experiments.tau_eps [--models experiments/results/generalization/models.csv]`` or ``--quick`` (on
the quick grid of ``experiments.generalization``, trained first if missing). Writes ``tau_eps.csv``,
``rates_eps.csv`` (every model's
μ_SRR, R^c − R, R^c, R and λ‖Z‖₀ at every ε: τ(ε) recomputes from it without the eigenvalue files),
``tau_eps_floor.csv``, ``tau_eps.png`` and ``tau_eps_summary.json`` beside ``models.csv`` (``--out`` to change).
"""
from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import numpy as np

from experiments._common import RESULTS, parse_args, pyplot, read_csv, summary, write_csv, write_json

NAME = "tau_eps"
MEASURES = {"srr": "μ_SRR", "rate_term": "R^c − R", "Rc": "R^c alone"}
PAPER_SRR_TAU = 0.445  # HU24 §5, width 384
LAM = 0.1


def eps_grid(points: int, *, extra=()) -> np.ndarray:
    """``points`` log-spaced ε from 1e-2 to 1e2, with ``extra`` values merged in, sorted."""
    return np.unique(np.concatenate([np.logspace(-2, 2, points), np.asarray(extra, dtype=np.float64)]))


def model_curves(spectra: dict, eps: np.ndarray) -> dict[str, np.ndarray]:
    """μ_SRR, R^c − R and R^c (each averaged over layers) of one model at every ε of ``eps``."""
    from experiments._spectra import rates_from_spectra

    N, d, p = int(spectra["N"]), int(spectra["d"]), int(spectra["p"])
    L = int(spectra["layers"])
    R, Rc, above_R, above_Rc = (np.zeros(len(eps)) for _ in range(4))
    l0 = 0.0
    for ell in range(L):
        Re, Rce = (spectra[f"R_eig_{ell}"].astype(np.float64), spectra[f"Rc_eig_{ell}"].astype(np.float64))
        for i, e in enumerate(eps):
            r, rc = rates_from_spectra(Re, Rce, N=N, d=d, p=p, eps=float(e))
            R[i] += r.mean() / L
            Rc[i] += rc.mean() / L
            above_R[i] += np.mean(d / (N * e * e) * Re > 1) / L  # share of the spectrum above the ε-floor
            above_Rc[i] += np.mean(p / (N * e * e) * Rce > 1) / L
        l0 += float(np.mean(spectra[f"l0_{ell}"])) / L
    return {"srr": LAM * l0 + Rc - R, "rate_term": Rc - R, "Rc": Rc, "R": R, "l0_term": np.full(len(eps), LAM * l0),
            "above_R": above_R, "above_Rc": above_Rc}


def noise_ceilings(models: list[dict], gap: str = "eig_gap", min_models: int = 2) -> dict[int, float]:
    """Per width: τ between two seeds' gaps of the same configurations (``gap``: the column, by default the gap of
    the models whose eigenvalues are stored; rows without it are left out)."""
    from srr.generalization import kendall_tau

    out = {}
    models = [m for m in models if m.get(gap) not in (None, "")]
    for w in sorted({int(m["width"]) for m in models}):
        by = {(m["model_id"], int(m["seed"])): float(m[gap]) for m in models if int(m["width"]) == w}
        seeds = sorted({s for _, s in by})
        for a, b in itertools.combinations(seeds, 2):
            ids = sorted({i for i, s in by if s == a} & {i for i, s in by if s == b})
            if len(ids) >= max(2, min_models):
                out[w] = kendall_tau([by[(i, a)] for i in ids], [by[(i, b)] for i in ids], ties="a")
                break
    return out


def main(argv=None) -> dict:
    args = parse_args(NAME, __doc__, argv, extra=[
        (("--models",), dict(type=Path, default=None, help="models.csv (default experiments/results/generalization/"
                                                           "models.csv; quick: its quick/ grid)")),
        (("--points",), dict(type=int, default=41, help="log-spaced ε from 1e-2 to 1e2 (default 41)")),
        (("--min-models",), dict(type=int, default=2, help="rank a width/seed only with this many models (a grid "
                                 "still training: 32 leaves out a partial seed; default 2)")),
        (("--workers",), dict(type=int, default=1, help="unused (reads stored eigenvalues; kept for uniformity)")),
        (("--device",), dict(default="cpu", help="unused (numpy on the CPU; kept for uniformity)"))])
    from srr.generalization import kendall_tau

    from experiments._spectra import load_spectra

    started = time.perf_counter()
    if args.models is None:
        folder = RESULTS / "generalization" / ("quick" if args.quick else "")
        args.models = folder / "models.csv"
        if args.quick and not args.models.is_file():
            from experiments import generalization

            generalization.main(["--quick", "--out", str(folder)])
    if "--out" not in args.argv:
        args.out = args.models.parent
    folder = args.models.parent
    models = read_csv(args.models)
    with_eig = [m for m in models if m.get("eig_file") not in (None, "") and (folder / m["eig_file"]).is_file()]
    ceilings = noise_ceilings(with_eig, min_models=args.min_models)  # the ceiling of the gaps τ(ε) ranks against

    rows, checks, curves, floor, grids = [], [], {}, [], {}
    widths = sorted({int(m["width"]) for m in with_eig})
    marks = {}
    for w in widths:
        at = [m for m in with_eig if int(m["width"]) == w]
        sp0 = load_spectra(folder / at[0]["eig_file"])
        N, d, p = int(sp0["N"]), int(sp0["d"]), int(sp0["p"])
        marks[w] = {"eps_p_over_N": math.sqrt(p / N), "eps_d_over_N": math.sqrt(d / N), "N": N, "d": d, "p": p}
        eps = grids[w] = eps_grid(args.points, extra=(0.1, 1.0, marks[w]["eps_p_over_N"], marks[w]["eps_d_over_N"]))
        for m in at:
            c = model_curves(load_spectra(folder / m["eig_file"]), eps)
            curves[(w, int(m["seed"]), m["model_id"])] = (c, float(m.get("eig_gap", m["gap"])))
            if not m.get("eig_retrained"):
                for col, e in (("srr", 0.1), ("srr_eps2_p_over_N", marks[w]["eps_p_over_N"]), ("srr_eps1", 1.0)):
                    i = int(np.argmin(np.abs(eps - e)))
                    checks.append(abs(c["srr"][i] - float(m[col])) / max(1.0, abs(float(m[col]))))
        seeds = sorted({int(m["seed"]) for m in at})
        for i, e in enumerate(eps):  # how much of the Gram spectra lies above the log-determinant's floor 1/α, 1/β
            keys = [k for k in curves if k[0] == w]
            floor.append({"width": w, "eps": float(e), "models": len(keys),
                          "share_above_floor_R": float(np.mean([curves[k][0]["above_R"][i] for k in keys])),
                          "share_above_floor_Rc": float(np.mean([curves[k][0]["above_Rc"][i] for k in keys]))})
        groups = [(f"seed {s}", [k for k in curves if k[0] == w and k[1] == s]) for s in seeds]
        groups = [(label, keys) for label, keys in groups if len(keys) >= max(2, args.min_models)]
        if len(groups) > 1:  # both seeds: only those with enough models
            groups.append(("both seeds", [k for _, keys in groups for k in keys]))
        for label, keys in groups:
            gaps = [curves[k][1] for k in keys]
            for measure in MEASURES:
                values = np.array([curves[k][0][measure] for k in keys])  # (models, eps)
                for i, e in enumerate(eps):
                    rows.append({"width": w, "models": label, "n": len(keys), "eps": float(e), "eps2": float(e * e),
                                 "measure": measure, "tau": kendall_tau(values[:, i].tolist(), gaps, ties="a"),
                                 "noise_ceiling": ceilings.get(w, float("nan"))})
    write_csv(args.out / "tau_eps.csv", rows)
    write_csv(args.out / "rates_eps.csv", [  # every model's curves: τ(ε) recomputes from this file alone
        {"width": w, "seed": s, "model_id": i, "gap": gap, "eps": float(e),
         **{k: float(c[k][j]) for k in ("srr", "rate_term", "Rc", "R", "l0_term")}}
        for (w, s, i), (c, gap) in curves.items() for j, e in enumerate(grids[w])])
    if floor:
        write_csv(args.out / "tau_eps_floor.csv", floor)
    peaks = []
    for (w, label, measure), group in itertools.groupby(rows, key=lambda r: (r["width"], r["models"], r["measure"])):
        group = list(group)
        best = max(group, key=lambda r: r["tau"])
        at = {round(r["eps"], 12): r["tau"] for r in group}
        peaks.append({"width": w, "models": label, "measure": measure, "n": best["n"], "peak_eps": best["eps"],
                      "peak_tau": best["tau"], "tau_eps0.1": at.get(0.1), "tau_eps1": at.get(1.0),
                      "tau_eps2_p_over_N": at.get(round(marks[w]["eps_p_over_N"], 12)),
                      "tau_eps2_d_over_N": at.get(round(marks[w]["eps_d_over_N"], 12)),
                      "noise_ceiling": ceilings.get(w)})
    if rows:
        _plot(rows, floor, marks, ceilings, args.out / "tau_eps.png")
    payload = summary(NAME, args, started, models_csv=str(args.models), models=len(models),
                      models_with_eigenvalues=len(with_eig), widths=widths, points=args.points, lam=LAM,
                      kendall="tau_a (Jiang et al., no tie correction)", noise_ceiling=ceilings, marks=marks,
                      rescore_check_max_rel_diff=max(checks) if checks else None, rescore_checks=len(checks),
                      peaks=peaks, paper_srr_tau_width384=PAPER_SRR_TAU)
    write_json(args.out / "tau_eps_summary.json", payload)
    return payload


def _plot(rows, floor, marks, ceilings, path):
    plt = pyplot()
    widths = sorted({r["width"] for r in rows})
    fig, axes = plt.subplots(2, len(widths), figsize=(6.2 * len(widths), 6.4), squeeze=False,
                             gridspec_kw={"height_ratios": [2.2, 1]}, sharex="col")
    colors = dict(zip(MEASURES, ("C0", "C1", "C2")))
    styles = {"seed 0": "-", "seed 1": "--", "both seeds": ":"}
    for ax, w in zip(axes[0], widths):
        at = [r for r in rows if r["width"] == w]
        for (label, measure), group in itertools.groupby(sorted(at, key=lambda r: (r["models"], r["measure"],
                                                                                     r["eps"])),
                                                         key=lambda r: (r["models"], r["measure"])):
            group = list(group)
            eps, tau = [r["eps"] for r in group], [r["tau"] for r in group]
            ax.plot(eps, tau, styles.get(label, "-"), color=colors[measure], lw=1.4,
                    label=f"{MEASURES[measure]}, {label} (n = {group[0]['n']})")
            k = int(np.argmax(tau))
            ax.plot([eps[k]], [tau[k]], "o", color=colors[measure], ms=5)
        if w in ceilings:
            c = ceilings[w]
            ax.axhspan(c, 1.0, color="grey", alpha=0.15, label=f"above the noise ceiling ({c:.3f})")
            ax.axhline(c, color="grey", lw=1)
        ax.axhline(PAPER_SRR_TAU, color="k", lw=1, ls="-.", label="HU24, SRR, width 384: 0.445")
        ax.axhline(0, color="k", lw=0.5)
        m = marks[w]
        ax.axvline(m["eps_p_over_N"], color="C3", lw=1, ls=":", label=f"ε² = p/N ({m['p']}/{m['N']})")
        ax.axvline(m["eps_d_over_N"], color="C4", lw=1, ls=":", label=f"ε² = d/N ({m['d']}/{m['N']})")
        ax.set(xscale="log", xlabel="ε", ylabel="Kendall τ with the generalization gap", ylim=(-1, 1),
               title=f"d = {w}, {m['N']} tokens (dots: τ's peak)")
        ax.legend(fontsize=6, loc="lower left")
    for ax, w in zip(axes[1], widths):
        at = sorted((r for r in floor if r["width"] == w), key=lambda r: r["eps"])
        ax.plot([r["eps"] for r in at], [r["share_above_floor_R"] for r in at], color="k", label="R: αλ > 1")
        ax.plot([r["eps"] for r in at], [r["share_above_floor_Rc"] for r in at], color="k", ls="--",
                label="R^c: βλ > 1")
        for key, color in (("eps_p_over_N", "C3"), ("eps_d_over_N", "C4")):
            ax.axvline(marks[w][key], color=color, lw=1, ls=":")
        ax.set(xscale="log", xlabel="ε", ylabel="share of the Gram spectra\nabove the floor", ylim=(0, 1.02))
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
