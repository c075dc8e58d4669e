"""Experiment — does μ_SRR predict generalization? HU24 §5 on CIFAR-10 (MATH.md §5, §5b).

HU24's grid at a scale a 2-core CPU affords, per width: variant {crate, crate_c, crate_n, crate_t}
× batch size × learning rate × dropout (two values each) = 32 models, each trained with Adam, no
augmentation, plain cross-entropy, until its training cross-entropy (eval mode, the whole
training subset) is ≤ 0.01 or ``--max-epochs`` is reached (``reached`` says which). Dropout is
in HU24's three places (after the position embedding, on the attention weights, after the
attention output). The grid is trained once per seed (``--seeds``, default 0 1): the τ between
the two seeds' gaps is the noise ceiling any measure can reach.

Model: ``crate_micro``-shaped, width d (``--widths``, default 64), 4 heads of d/4, ``--depth`` 4, patch
``--patch-size`` 8 (17 tokens per image: the fewest MATH.md §5b allows; patch 4 gives 65 tokens at
about 3× the cost, which a 2-core CPU could not afford for 64 models trained to CE 0.01).

Data: a class-balanced ``--train-subset`` of the CIFAR-10 (JPEG) training set; the
generalization gap (test CE − train CE) is measured on the **full 10,000-image test set**.

Per model: every layer's R, R^c (at ε = 0.1, ε² = p/N, ε = 1), ‖Z‖₀ and the YU23-convention R^c
(``experiments/_cifar.py``) on ``--measure-samples`` training images; μ_SRR = HU24 eq. 11 (mean
over all layers, raw tokens, λ = 0.1); the baselines of ``srr.generalization`` (Jiang et al.
2019). Statistics: Kendall τ (Jiang et al.'s τ_a, no tie correction) and granulated Ψ, **per
width and per seed**; pooled widths only as an aside.

Eigenvalues (issue 22 §2): every model also stores, per layer and measured image, the eigenvalues of its output
tokens' Gram and of each head's ``A_kᵀA_k`` in ``eig/<seed>-<model>.npz`` (``experiments/_spectra.py``; the row's
``eig_file``), so that R, R^c and μ_SRR are exact at any ε without retraining (``experiments/tau_eps.py``).

Spanning sessions: a finished model is ``rows/<seed>-<model>.json`` (written last) plus its eigenvalue file, and is
skipped; ``models.csv`` is rewritten after every model, merging the rows already in it (their values kept) with
the finished ones; a killed run loses at most the model in progress. Rows already in ``models.csv`` without
eigenvalues (the d = 64 grid, whose models were not kept) are retrained for them when their width is asked for:
the row keeps its values and gains ``eig_file``, ``eig_gap`` (the retrained model's gap) and ``eig_retrained``.

Run: ``python -m experiments.generalization [--workers 2] [--widths 64 128] [--seeds 0 1]`` or ``--quick``;
``--device cuda`` trains on a GPU; ``--max-models K`` stops after K models. ``--from-csv models.csv``
re-tabulates without training. Writes ``models.csv`` (one row per model, with ``width``, ``seed`` and
``eig_file``; per-layer parts in ``L{ℓ}_*`` columns), ``rows/``, ``eig/``, ``kendall.csv``, ``kendall.md``,
``noise.csv``, ``summary.json`` (``training_runs``: every invocation that trained), ``generalization.png``.
"""
from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import numpy as np

from experiments._common import markdown_table, parse_args, pyplot, read_csv, summary, write_csv, write_json
from experiments._pool import run_jobs

NAME = "generalization"
GRID = dict(variant=("crate", "crate_c", "crate_n", "crate_t"), batch_size=(32, 64), lr=(1e-3, 2e-3),
            dropout=(0.0, 0.05))
QUICK_GRID = dict(variant=("crate", "crate_n"), batch_size=(32,), lr=(1e-3, 2e-3), dropout=(0.0,))
BASELINES = ("frobenius_product", "frobenius_sum", "spectral_product", "spectral_sum", "path_norm",
             "inverse_margin", "sharpness")
SRR_SCORES = {"srr": ("0.1", 0.1), "srr_eps2_p_over_N": ("p/N", 0.1), "srr_eps1": ("1", 0.1)}
PARTS = ("srr_l0_term", "srr_rate_term[0.1]", "srr_rate_term[1]")  # μ_SRR's two halves, re-scored from the layers
MEASURES = (*SRR_SCORES, "srr_yu23", *PARTS, *BASELINES)
PAPER_SRR_TAU = 0.445  # HU24 §5, width 384, 32 models (MATH.md §5b)
TARGET_LOSS = 0.01
ROWS_DIR, EIG_DIR = "rows", "eig"  # per-model row (the done marker) and eigenvalue file, under --out
DEPTH, HEADS, PATCH = 4, 4, 8


def run_one(job: dict) -> dict:
    """Train one grid model to the stopping criterion and measure it (runs in a worker process)."""

    from experiments import _cifar
    from experiments._common import seed_everything
    from experiments._train import evaluate, fit
    from srr.generalization import (classification_error, frobenius_product, frobenius_sum, inverse_margin,
                                    path_norm, sharpness, spectral_product, spectral_sum)

    _, train, test = _cifar.job_data(job, augment=False)
    device = train[0].device
    seed_everything(job["seed"])
    model = _cifar.model(job["variant"], width=job["width"], depth=job["depth"], heads=HEADS,
                         dropout=job["dropout"], patch_size=job["patch_size"]).to(device)
    result = fit(model, train, epochs=job["max_epochs"], batch_size=job["batch_size"], lr=job["lr"],
                 seed=job["seed"], target_loss=TARGET_LOSS, check_every=1)
    measured = time.perf_counter()
    train_loss, train_acc = evaluate(model, train)
    test_loss, test_acc = evaluate(model, test)
    Xm, ym = train[0][: job["measure_samples"]], train[1][: job["measure_samples"]]
    layers = _cifar.layer_stats(model, Xm)
    model.eval()
    row = {"model_id": job["model_id"], "seed": job["seed"], "variant": job["variant"], "width": job["width"],
           "batch_size": job["batch_size"], "lr": job["lr"], "dropout": job["dropout"],
           "train_ce": train_loss, "test_ce": test_loss, "gap": test_loss - train_loss,
           "train_acc": train_acc, "test_acc": test_acc, "epochs": result.epochs, "reached": result.reached_target,
           "train_seconds": result.seconds, "n_train": len(train[1]), "n_test": len(test[1])}
    for name, (eps, lam) in SRR_SCORES.items():
        row[name] = _cifar.model_srr(layers, eps=eps, lam=lam)
    row["srr_yu23"] = float(np.mean([r["Rc_yu23_in"] for r in layers]))
    cpu = model.cpu()
    Xc, yc = Xm.cpu(), ym.cpu()
    row["frobenius_product"] = frobenius_product(cpu)
    row["frobenius_sum"] = frobenius_sum(cpu)
    row["spectral_product"] = spectral_product(cpu)
    row["spectral_sum"] = spectral_sum(cpu)
    row["path_norm"] = path_norm(cpu, tuple(Xc.shape[1:]))
    row["inverse_margin"] = inverse_margin(cpu, (Xc, yc))
    row["sharpness"] = sharpness(cpu, classification_error, (Xc, yc), num_samples=job["sharpness_samples"],
                                 search_steps=job["sharpness_steps"], seed=0)
    row["params"] = sum(p.numel() for p in cpu.parameters())
    for r in layers:
        for key, value in r.items():
            if key != "layer":
                row[f"L{r['layer']}_{key}"] = value
    if job.get("out"):  # the eigenvalues that re-score every rate at any ε (experiments/_spectra.py), then the row
        from experiments._spectra import model_spectra, save_spectra

        out, key = Path(job["out"]), job_key(job)
        cfg = cpu.config
        save_spectra(out / EIG_DIR / f"{key}.npz", model_spectra(cpu, Xc), N=cfg.num_patches + 1, d=cfg.dim,
                     p=cfg.head_dim)
        row["eig_file"] = f"{EIG_DIR}/{key}.npz"
        row["eig_gap"] = row["gap"]
        row["measure_seconds"] = time.perf_counter() - measured
        _write_row(out / ROWS_DIR / f"{key}.json", row)
    return row


def job_key(job: dict) -> str:
    """A model's file name: seed and model id (the id carries the width)."""
    return f"s{job['seed']}-{job['model_id']}"


def _write_row(path: Path, row: dict) -> None:
    """The finished model's row, written last and atomically: its presence marks the model done."""
    from experiments._common import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write_json(tmp, row)
    tmp.replace(path)


def jobs_for(grid: dict, args) -> list[dict]:
    common = dict(max_epochs=args.max_epochs, depth=args.depth, patch_size=args.patch_size,
                  train_subset=args.train_subset,
                  measure_samples=args.measure_samples, data_dir=str(args.data_dir), device=args.device,
                  sharpness_samples=1 if args.quick else 3, sharpness_steps=3 if args.quick else 10,
                  test_subset=500 if args.quick else None, out=str(args.out))
    jobs = []
    for seed in args.seeds:
        for width in args.widths:
            for values in itertools.product(*grid.values()):
                hp = dict(zip(grid, values))
                model_id = "w{}-{}-bs{}-lr{:g}-do{:g}".format(width, *values)
                jobs.append({**common, **hp, "width": width, "seed": seed, "model_id": model_id})
    return jobs


def add_parts(models: list[dict]) -> list[dict]:
    """μ_SRR's halves from the saved per-layer columns (no retraining): the sparsity term λ‖Z‖₀ (λ = 0.1)
    and the rate term R^c − R at ε = 0.1 and ε = 1, each averaged over layers like μ_SRR (HU24 eq. 11)."""
    for m in models:
        layers = sorted({int(k[1:].split("_", 1)[0]) for k in m if k.startswith("L") and k.endswith("_l0")})
        if not layers:
            continue
        m["srr_l0_term"] = sum(0.1 * m[f"L{i}_l0"] for i in layers) / len(layers)
        for eps in ("0.1", "1"):
            m[f"srr_rate_term[{eps}]"] = sum(m[f"L{i}_Rc[{eps}]"] - m[f"L{i}_R[{eps}]"] for i in layers) / len(layers)
    return models


def statistics(models: list[dict], hyperparameters: list[str]) -> list[dict]:
    """Kendall τ (τ_a) and granulated Ψ of every measure, per width and seed, per width over both
    seeds, and pooled over widths (an aside)."""
    from srr.generalization import compare_measures

    add_parts(models)

    subsets = []
    widths = sorted({m["width"] for m in models})
    for w in widths:
        at_width = sorted({m["seed"] for m in models if m["width"] == w})
        for s in at_width:
            subsets.append((f"width {w}, seed {s}", [m for m in models if m["width"] == w and m["seed"] == s]))
        if len(at_width) > 1:
            subsets.append((f"width {w}, both seeds", [m for m in models if m["width"] == w]))
    if len(widths) > 1:
        subsets.append(("pooled widths (aside)", models))
    rows = []
    for name, subset in subsets:
        hp = [h for h in hyperparameters if len({m[h] for m in subset}) > 1]
        if len(subset) < 2 or not hp:  # a grid still being trained: nothing to rank yet
            continue
        measures = [m for m in MEASURES if all(m in r for r in subset)]
        for result in compare_measures(subset, measures, gap="gap", hyperparameters=hp, ties="a"):
            rows.append({"models": name, "n": result.n_models, "measure": result.measure, "tau": result.tau,
                         "Psi": result.Psi, **{f"psi[{k}]": v for k, v in result.psi.items()}})
    return rows


def noise_ceiling(models: list[dict]) -> list[dict]:
    """Per width: τ between the two seeds' gaps of identical configurations (the noise ceiling),
    and the same between their μ_SRR values (how reproducible the measure itself is)."""
    from srr.generalization import kendall_tau

    rows = []
    seeds = sorted({m["seed"] for m in models})
    for w in sorted({m["width"] for m in models}):
        for a, b in itertools.combinations(seeds, 2):
            by = {(m["model_id"], m["seed"]): m for m in models if m["width"] == w}
            ids = sorted({i for i, s in by if s == a} & {i for i, s in by if s == b})
            if len(ids) < 2:
                continue
            ga, gb = [by[(i, a)]["gap"] for i in ids], [by[(i, b)]["gap"] for i in ids]
            sa, sb = [by[(i, a)]["srr"] for i in ids], [by[(i, b)]["srr"] for i in ids]
            rows.append({"width": w, "seeds": f"{a} vs {b}", "n": len(ids), "tau_gap_between_seeds":
                         kendall_tau(ga, gb, ties="a"), "tau_srr_between_seeds": kendall_tau(sa, sb, ties="a"),
                         "mean_abs_gap_difference": float(np.mean(np.abs(np.subtract(ga, gb)))),
                         "gap_std_across_models": float(np.std(ga + gb))})
    return rows


def finished(out: Path) -> dict[str, dict]:
    """The models finished in ``out``: ``{key: row}`` from ``rows/*.json`` whose eigenvalue file exists."""
    import json

    done = {}
    for path in sorted((out / ROWS_DIR).glob("*.json")):
        row = json.loads(path.read_text())
        if (out / row["eig_file"]).is_file():
            done[path.stem] = row
    return done


def merge(base: list[dict], done: dict[str, dict]) -> list[dict]:
    """``models.csv``'s rows: ``base`` (the rows already there, values kept as they are) and every finished model.

    A base row without an eigenvalue file (the d = 64 grid trained before eigenvalues were stored) that a
    retraining has finished gets the retrained model's ``eig_file``, its gap as ``eig_gap`` (so a reader can
    check that retraining reproduced the model) and ``eig_retrained = True``; its own values stay.
    """
    rows = {f"s{m['seed']}-{m['model_id']}": dict(m) for m in base}
    for key, row in done.items():
        if key not in rows:
            rows[key] = dict(row)
        elif rows[key].get("eig_file") in (None, ""):
            rows[key].update(eig_file=row["eig_file"], eig_gap=row["gap"], eig_retrained=True)
    return sorted(rows.values(), key=lambda m: (int(m["width"]), int(m["seed"])))  # stable: grid order kept


def _training_runs(previous: Path, this_run: dict | None) -> list[dict]:
    """Every invocation that trained models into this folder (a grid may span sessions)."""
    import json

    runs: list[dict] = []
    if previous.is_file():
        before = json.loads(previous.read_text())
        runs = list(before.get("training_runs") or [])
        if not runs and (before.get("training_run") or not before.get("quick", True)):
            first = before.get("training_run") or {k: before[k] for k in ("command", "seconds", "machine")
                                                     if k in before}
            runs = [{**first, "models": "the d = 64 grid (64 models, seeds 0 and 1)"}]
    return runs + ([this_run] if this_run else [])


def main(argv=None) -> dict:
    from experiments._cifar import data_dir

    args = parse_args(NAME, __doc__, argv, extra=[
        (("--workers",), dict(type=int, default=1, help="worker processes (one torch thread each)")),
        (("--device",), dict(default="cpu", help="torch device of the training (cpu, cuda)")),
        (("--data-dir",), dict(default=None, help="CIFAR-10 folder (default ../shared/data/cifar10)")),
        (("--from-csv",), dict(type=Path, default=None, help="skip training: tabulate the rows of this CSV")),
        (("--widths", "--width"), dict(type=int, nargs="+", default=None, help="token widths d (default 64)")),
        (("--seeds",), dict(type=int, nargs="+", default=None, help="grid seeds (default 0 1)")),
        (("--depth",), dict(type=int, default=None, help=f"layers (default {DEPTH})")),
        (("--patch-size",), dict(type=int, default=PATCH, help=f"patch size (default {PATCH}: 17 tokens per image)")),
        (("--train-subset",), dict(type=int, default=None, help="training images (default 500)")),
        (("--measure-samples",), dict(type=int, default=None, help="training images measured (default 500)")),
        (("--max-epochs",), dict(type=int, default=None, help="epoch cap when CE 0.01 is not reached (default 200)")),
        (("--max-models",), dict(type=int, default=None, help="train at most this many models, then tabulate"))])
    started = time.perf_counter()
    grid = QUICK_GRID if args.quick else GRID
    args.data_dir = data_dir(args.data_dir)
    args.widths = args.widths or ([16] if args.quick else [64])
    args.seeds = args.seeds or ([0] if args.quick else [0, 1])
    args.depth = args.depth or (1 if args.quick else DEPTH)
    args.train_subset = args.train_subset or (100 if args.quick else 500)
    args.measure_samples = args.measure_samples or (50 if args.quick else 500)
    args.max_epochs = args.max_epochs or (1 if args.quick else 200)
    models_csv = args.out / "models.csv"
    trained = 0

    if args.from_csv:
        models = read_csv(args.from_csv)
    else:
        base = read_csv(models_csv) if models_csv.is_file() else []
        done = finished(args.out)
        todo = [j for j in jobs_for(grid, args) if job_key(j) not in done]
        skipped = len(jobs_for(grid, args)) - len(todo)
        if args.max_models is not None:
            todo = todo[: args.max_models]
        print(f"{len(todo)} models to train, {skipped} of the grid already finished in {args.out}", flush=True)

        def progress(i, n, row):
            nonlocal trained
            trained += 1
            done[job_key(row)] = row
            write_csv(models_csv, merge(base, done))  # after every model: an interrupted grid loses one model
            print(f"[{i}/{n}] seed {row['seed']} {row['model_id']} {row['variant']}: {row['epochs']} ep "
                  f"({row['train_seconds']:.0f} s), train CE {row['train_ce']:.4f}, test acc {row['test_acc']:.3f}, "
                  f"gap {row['gap']:.3f}, srr {row['srr']:.1f}", flush=True)

        run_jobs(run_one, todo, workers=args.workers, progress=progress)
        models = merge(base, done)
        write_csv(models_csv, models)
    hyperparameters = [h for h in grid if len(grid[h]) > 1]
    stats = statistics(models, hyperparameters)
    noise = noise_ceiling(models)
    write_csv(args.out / "kendall.csv", stats)
    if noise:
        write_csv(args.out / "noise.csv", noise)
    cols = ["models", "measure", "tau", *[f"psi[{h}]" for h in hyperparameters], "Psi"]
    (args.out / "kendall.md").write_text(markdown_table(stats, cols, {c: "+.3f" for c in cols[2:]}))
    _plot(models, args.out / "generalization.png")
    reached = sum(bool(m["reached"]) for m in models)
    widths = sorted({int(m["width"]) for m in models})
    counts = {f"width {w}, seed {s}": sum(1 for m in models if m["width"] == w and m["seed"] == s)
              for w in widths for s in sorted({int(m["seed"]) for m in models})}
    payload = summary(NAME, args, started, dataset="cifar10 (JPEG)", data_dir=str(args.data_dir),
                      grid={k: list(v) for k, v in grid.items()}, widths=widths, seeds=args.seeds,
                      depth=args.depth, heads=HEADS, patch_size=args.patch_size,
                      tokens_per_image=(32 // args.patch_size) ** 2 + 1, train_subset=args.train_subset,
                      test_images=models[0]["n_test"] if models else None, measure_samples=args.measure_samples,
                      n_models=len(models), models_per_width_and_seed=counts,
                      with_eigenvalues=sum(1 for m in models if m.get("eig_file") not in (None, "")),
                      target_train_ce=TARGET_LOSS, max_epochs=args.max_epochs,
                      reached_target=reached, max_train_ce=max(m["train_ce"] for m in models),
                      workers=args.workers, device=args.device, kendall="tau_a (Jiang et al., no tie correction)",
                      paper_srr_tau_width384=PAPER_SRR_TAU, noise_ceiling=noise, statistics=stats)
    this_run = None
    if trained:
        this_run = {"command": payload["command"], "seconds": payload["seconds"], "machine": payload["machine"],
                    "models_trained": trained, "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    payload["training_runs"] = _training_runs(args.out / "summary.json", this_run)
    write_json(args.out / "summary.json", payload)
    return payload


def _plot(models, path):
    plt = pyplot()
    panels = ("srr", "srr_eps1", "srr_yu23", "sharpness")
    labels = {"srr": "μ_SRR, ε = 0.1 (HU24)", "srr_eps1": "μ_SRR, ε = 1", "srr_yu23": "R^c, YU23 convention",
              "sharpness": "sharpness (1/σ²)"}
    widths = sorted({int(m["width"]) for m in models})
    fig, axes = plt.subplots(len(widths), len(panels), figsize=(4.2 * len(panels), 3.8 * len(widths)),
                             squeeze=False)
    colors = dict(zip(GRID["variant"], plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    markers = {0: "o", 1: "^"}
    for row, width in zip(axes, widths):
        at = [m for m in models if int(m["width"]) == width]
        for ax, measure in zip(row, panels):
            for variant in dict.fromkeys(m["variant"] for m in at):
                for seed in sorted({m["seed"] for m in at}):
                    sel = [m for m in at if m["variant"] == variant and m["seed"] == seed
                           and math.isfinite(float(m[measure]))]
                    ax.scatter([m[measure] for m in sel], [m["gap"] for m in sel], s=16, color=colors.get(variant),
                               marker=markers.get(seed, "s"), alpha=0.8, label=f"{variant}, seed {seed}")
            ax.set(xlabel=labels[measure], ylabel=f"d = {width}: test CE − train CE")
            if measure == "sharpness":
                ax.set_xscale("log")
        row[0].legend(fontsize=6)
    fig.suptitle("CIFAR-10 (JPEG): complexity measure vs generalization gap, one point per model, per width",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
