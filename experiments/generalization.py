"""Experiment 3 — does μ_SRR predict generalization? (HU24 §5; MATH.md §5)

A grid of CRATE models on ``digits`` over five hyperparameters, two values each:
variant {crate, crate_c, crate_n, crate_t} × batch size {32, 128} × learning rate {1e-3, 3e-3}
× width d {32, 64} (4 heads of d/4, 4 layers, patch 2) × dropout {0, 0.1} = 64 models (Adam,
plain cross-entropy, no augmentation), each trained until its training cross-entropy (eval mode,
whole training split) is ≤ 0.01 — HU24's criterion — or until ``--max-epochs``, whichever comes
first (``reached`` says which). Generalization gap = test loss − training loss (the 360-image
test split plays HU24's validation set).

Per model: μ_SRR (:func:`srr.measure.measure` on 512 training images, each layer's own U, ε = 0.1,
λ = 0.1, mean over layers of μ_SRR at the layer outputs) and the baselines of
``srr.measure.baselines`` (Jiang et al. 2019): log products/sums of Frobenius and spectral norms,
path-norm, 1/margin², PAC-Bayes magnitude flatness 1/σ² (accuracy-drop criterion 0.1).
Statistics: Kendall τ over all model pairs and granulated Ψ (:func:`srr.measure.compare_measures`),
over all models and per width.

Run: ``python -m experiments.generalization [--workers N] [--max-epochs 150]`` or ``--quick``.
Writes ``models.csv`` (one row per model), ``kendall.csv``/``kendall.md``, ``summary.json``,
``generalization.png``.
"""
from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

from experiments._common import markdown_table, read_csv, parse_args, pyplot, summary, write_csv, write_json
from experiments._pool import run_jobs

NAME = "generalization"
GRID = dict(variant=("crate", "crate_c", "crate_n", "crate_t"), batch_size=(32, 128), lr=(1e-3, 3e-3),
            width=(32, 64), dropout=(0.0, 0.1))
QUICK_GRID = dict(variant=("crate", "crate_n"), batch_size=(64,), lr=(1e-3, 3e-3), width=(16,), dropout=(0.0,))
MEASURES = ("srr", "frobenius_product", "frobenius_sum", "spectral_product", "spectral_sum", "path_norm",
            "inverse_margin", "sharpness")
PAPER_SRR_TAU = 0.445  # HU24 §5, width 384, CIFAR-10 (MATH.md §5)
TARGET_LOSS = 0.01


def run_one(job: dict) -> dict:
    """Train one grid model to the stopping criterion and measure it (runs in a worker process)."""
    import torch

    from experiments._common import seed_everything
    from experiments._train import evaluate, fit, load_split
    from srr.generalization import (classification_error, frobenius_product, frobenius_sum, inverse_margin,
                                    path_norm, sharpness, spectral_product, spectral_sum)
    from srr.measurement import measure
    from srr.models import create_model

    seed_everything(job["seed"])
    train, test = load_split("digits", "train"), load_split("digits", "test")
    if job.get("train_subset"):
        train = (train[0][: job["train_subset"]], train[1][: job["train_subset"]])
    w = job["width"]
    model = create_model("crate_nano", variant=job["variant"], dim=w, head_dim=w // 4, dropout=job["dropout"],
                         **job.get("overrides", {}))
    result = fit(model, train, epochs=job["max_epochs"], batch_size=job["batch_size"], lr=job["lr"],
                 seed=job["seed"], target_loss=TARGET_LOSS, check_every=1)
    train_loss, train_acc = evaluate(model, train)
    test_loss, test_acc = evaluate(model, test)
    Xm, ym = train[0][:512], train[1][:512]
    model.eval()
    row = {k: v for k, v in job.items() if k != "overrides"}
    row.update(epochs=result.epochs, reached=result.reached_target, train_loss=train_loss, train_acc=train_acc,
               test_loss=test_loss, test_acc=test_acc, gap=test_loss - train_loss, train_seconds=result.seconds)
    row["srr"] = measure(model, Xm, progress=False).srr
    row["frobenius_product"] = frobenius_product(model)
    row["frobenius_sum"] = frobenius_sum(model)
    row["spectral_product"] = spectral_product(model)
    row["spectral_sum"] = spectral_sum(model)
    row["path_norm"] = path_norm(model, tuple(Xm.shape[1:]))
    row["inverse_margin"] = inverse_margin(model, (Xm, ym))
    row["sharpness"] = sharpness(model, classification_error, (Xm, ym), num_samples=job["sharpness_samples"],
                                 search_steps=job["sharpness_steps"], seed=0)
    row["params"] = sum(p.numel() for p in model.parameters())
    return row


def jobs_for(grid: dict, *, seed: int, max_epochs: int, quick: bool) -> list[dict]:
    keys = list(grid)
    extra = dict(train_subset=96, overrides=dict(depth=1), sharpness_samples=1, sharpness_steps=3) if quick else \
        dict(sharpness_samples=3, sharpness_steps=12)
    return [{**dict(zip(keys, values)), "seed": seed, "max_epochs": max_epochs, **extra}
            for values in itertools.product(*grid.values())]


def statistics(models: list[dict], hyperparameters: list[str]) -> list[dict]:
    """Kendall τ and granulated Ψ of every measure, over all models and per width."""
    from srr.generalization import compare_measures

    rows = []
    subsets = [("all", models)]
    widths = sorted({m["width"] for m in models if "width" in m})
    if len(widths) > 1:
        subsets += [(f"width {w}", [m for m in models if m["width"] == w]) for w in widths]
    for name, subset in subsets:
        hp = [h for h in hyperparameters if len({m[h] for m in subset}) > 1]
        # inf (e.g. 1/margin² of a model that misclassifies >10 % of its training data) ranks as
        # "most complex", which is what it means; rank statistics take it as it is.
        for result in compare_measures(subset, MEASURES, gap="gap", hyperparameters=hp):
            rows.append({"models": name, "n": result.n_models, "measure": result.measure, "tau": result.tau,
                         "Psi": result.Psi, **{f"psi[{k}]": v for k, v in result.psi.items()}})
    return rows


def main(argv=None) -> dict:
    args = parse_args(NAME, __doc__, argv, extra=[
        (("--workers",), dict(type=int, default=1, help="worker processes (one torch thread each)")),
        (("--from-csv",), dict(type=Path, default=None, help="skip training: tabulate the rows of this CSV")),
        (("--max-epochs",), dict(type=int, default=None, help="epoch cap when CE 0.01 is not reached (default 150)"))])
    started = time.perf_counter()
    grid = QUICK_GRID if args.quick else GRID
    max_epochs = args.max_epochs or (1 if args.quick else 150)
    jobs = jobs_for(grid, seed=args.seed, max_epochs=max_epochs, quick=args.quick)

    done: list[dict] = []

    def progress(i, n, row):
        done.append(row)
        write_csv(args.out / "models.partial.csv", done)  # survives an interrupted grid
        print(f"[{i}/{n}] {row['variant']} bs {row['batch_size']} lr {row['lr']:g} w {row['width']} "
              f"do {row['dropout']}: {row['epochs']} ep, train CE {row['train_loss']:.4f}, gap {row['gap']:.3f}, "
              f"srr {row['srr']:.1f}", flush=True)

    models = read_csv(args.from_csv) if args.from_csv else run_jobs(run_one, jobs, workers=args.workers, progress=progress)
    write_csv(args.out / "models.csv", models)
    (args.out / "models.partial.csv").unlink(missing_ok=True)
    hyperparameters = [h for h in grid if len(grid[h]) > 1]
    stats = statistics(models, hyperparameters)
    write_csv(args.out / "kendall.csv", stats)
    cols = ["models", "measure", "tau", *[f"psi[{h}]" for h in hyperparameters], "Psi"]
    (args.out / "kendall.md").write_text(markdown_table(stats, cols, {c: "+.3f" for c in cols[2:]}))
    _plot(models, args.out / "generalization.png")
    reached = sum(m["reached"] for m in models)
    payload = summary(NAME, args, started, dataset="digits", grid={k: list(v) for k, v in grid.items()},
                      n_models=len(models), target_train_ce=TARGET_LOSS, max_epochs=max_epochs,
                      reached_target=reached, max_train_ce=max(m["train_loss"] for m in models),
                      workers=args.workers, paper_srr_tau_width384=PAPER_SRR_TAU, statistics=stats)
    write_json(args.out / "summary.json", payload)
    return payload


def _plot(models, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colors = dict(zip(GRID["variant"], plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, measure in zip(axes, ("srr", "path_norm", "sharpness")):
        for variant in dict.fromkeys(m["variant"] for m in models):
            sel = [m for m in models if m["variant"] == variant and math.isfinite(m[measure])]
            ax.scatter([m[measure] for m in sel], [m["gap"] for m in sel], s=14, color=colors.get(variant),
                       label=variant, alpha=0.8)
        ax.set(xlabel=measure, ylabel="generalization gap (test CE − train CE)")
        if measure != "srr":
            ax.set_xscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
