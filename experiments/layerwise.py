"""Experiment 2 — layer-wise compression and sparsity (YU23 Figs. 3–4; HU24 Figs. 2–3).

For each CRATE variant, on ``digits`` and on synthetic ``subspaces`` (10 random 4-dim subspaces
of R^64 as 8×8 images), a ``crate_nano`` model (d 64, 4 layers, 4 heads of 16) is measured with
:func:`srr.measure.measure` at initialisation and after every few epochs of training (Adam,
plain cross-entropy): per layer ℓ, R^c (E2) with the layer's own subspaces U^ℓ, the fraction of
exactly-zero entries (ℓ0 sparsity) and μ_SRR (E4), on 256 training images, ε = 0.1, λ = 0.1,
LayerNorm removed (srr.measure's reading of HU24 §5).

The papers' claims under test: along the layers, the MSSA half-step lowers R^c (compression) and
the ISTA step raises sparsity; training makes both stronger. Also recorded: how many of the L
MSSA half-steps lower R^c, ``R^c(Z^{ℓ+½}) < R^c(Z^ℓ)``.

Run: ``python -m experiments.layerwise`` (≈10 min on 2 CPU cores) or ``--quick``.
Writes ``layers.csv`` (every site, layer, epoch), ``table.csv``/``table.md``, ``summary.json``
and ``layerwise.png`` (per-layer curves at init and after training) and ``training.png``.
"""
from __future__ import annotations

import time

import numpy as np

from experiments._common import markdown_table, parse_args, pyplot, seed_everything, summary, write_csv, write_json
from experiments._train import evaluate, fit, load_split, subspace_options
from srr.measurement import measure
from srr.models import create_model

NAME = "layerwise"
VARIANTS = ("crate", "crate_c", "crate_n", "crate_t", "crate_exact", "crate_alpha")
DATASETS = ("digits", "subspaces")


def _data(dataset: str, quick: bool):
    if dataset == "digits":
        return load_split("digits", "train"), load_split("digits", "test")
    opts = subspace_options(num_train=256 if quick else 1000, num_test=128 if quick else 500)
    return load_split("subspaces", "train", **opts), load_split("subspaces", "test", **opts)


def _rows(m, **tags) -> list[dict]:
    return [{**tags, "layer": r.layer, "site": r.site, "Rc": r.Rc, "R": r.R, "zero_fraction": r.zero_fraction,
             "srr": r.srr} for r in m]


def _mssa_lowering(rows: list[dict]) -> int:
    """Layers whose MSSA half-step lowers R^c: ``R^c(Z^{ℓ+½}) < R^c(Z^ℓ)``."""
    by = {(r["layer"], r["site"]): r["Rc"] for r in rows}
    layers = sorted({r["layer"] for r in rows})
    return sum(by[(l, "half")] < by[(l, "mssa_in")] for l in layers)


def main(argv=None) -> dict:
    args = parse_args(NAME, __doc__, argv, extra=[(("--epochs",), dict(type=int, default=None,
                                                                         help="training epochs (default 30)"))])
    started = time.perf_counter()
    seed_everything(args.seed)
    epochs, every, samples = (1, 1, 64) if args.quick else (args.epochs or 30, 5, 256)
    variants = ("crate", "crate_n") if args.quick else VARIANTS
    datasets = ("digits",) if args.quick else DATASETS
    model_kwargs = dict(depth=2) if args.quick else {}
    all_rows, table = [], []
    for dataset in datasets:
        train, test = _data(dataset, args.quick)
        Xm = train[0][:samples]
        for variant in variants:
            model = create_model("crate_nano", variant=variant, **model_kwargs)
            model_rows: list[dict] = []

            def record(epoch, model, dataset=dataset, variant=variant, model_rows=model_rows):
                if epoch % every == 0 or epoch == epochs:
                    m = measure(model, Xm, progress=False)
                    model_rows.extend(_rows(m, dataset=dataset, variant=variant, epoch=epoch))

            result = fit(model, train, epochs=epochs, batch_size=64, lr=1e-3, seed=args.seed, on_epoch=record)
            test_loss, test_acc = evaluate(model, test)
            all_rows += model_rows
            init = [r for r in model_rows if r["epoch"] == 0]
            final = [r for r in model_rows if r["epoch"] == epochs]
            out_init = [r for r in init if r["site"] == "out"]
            out_final = [r for r in final if r["site"] == "out"]
            table.append({
                "dataset": dataset, "variant": variant, "test_acc": test_acc, "train_loss": result.train_loss,
                "mssa_lowers_rc_init": f"{_mssa_lowering(init)}/{len(out_init)}",
                "mssa_lowers_rc_trained": f"{_mssa_lowering(final)}/{len(out_final)}",
                "rc_first_last_init": f"{out_init[0]['Rc']:.1f} → {out_init[-1]['Rc']:.1f}",
                "rc_first_last_trained": f"{out_final[0]['Rc']:.1f} → {out_final[-1]['Rc']:.1f}",
                "zero_frac_last_init": out_init[-1]["zero_fraction"],
                "zero_frac_last_trained": out_final[-1]["zero_fraction"],
                "srr_init": float(np.mean([r["srr"] for r in out_init])),
                "srr_trained": float(np.mean([r["srr"] for r in out_final])),
            })
            print(f"{dataset:9s} {variant:12s} test acc {test_acc:.3f}  train CE {result.train_loss:.3f}", flush=True)
    write_csv(args.out / "layers.csv", all_rows)
    write_csv(args.out / "table.csv", table)
    cols = list(table[0])
    (args.out / "table.md").write_text(markdown_table(table, cols, {"test_acc": ".3f", "train_loss": ".3f",
                                                                    "zero_frac_last_init": ".3f",
                                                                    "zero_frac_last_trained": ".3f",
                                                                    "srr_init": ".1f", "srr_trained": ".1f"}))
    _plot_layers(all_rows, datasets, variants, epochs, args.out / "layerwise.png")
    _plot_training(all_rows, datasets, variants, args.out / "training.png")
    payload = summary(NAME, args, started, epochs=epochs, measure_every=every, measured_samples=samples,
                      model="crate_nano", model_overrides=model_kwargs, optimizer="adam lr 1e-3 batch 64",
                      eps=0.1, lam=0.1, table=table)
    write_json(args.out / "summary.json", payload)
    return payload


def _plot_layers(rows, datasets, variants, epochs, path):
    plt = pyplot()
    metrics = (("Rc", "R^c(Z^{ℓ+1}) (E2)"), ("zero_fraction", "fraction of zeros in Z^{ℓ+1}"),
               ("srr", "μ_SRR(Z^{ℓ+1}) (E4)"))
    fig, axes = plt.subplots(len(metrics), len(datasets), figsize=(5.2 * len(datasets), 9), squeeze=False)
    colors = dict(zip(variants, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for j, dataset in enumerate(datasets):
        for i, (metric, label) in enumerate(metrics):
            ax = axes[i][j]
            for variant in variants:
                for epoch, style in ((0, ":"), (epochs, "-")):
                    sel = sorted((r["layer"], r[metric]) for r in rows if r["dataset"] == dataset and r["variant"] == variant
                                 and r["epoch"] == epoch and r["site"] == "out")
                    ax.plot([l + 1 for l, _ in sel], [v for _, v in sel], style, marker="o", ms=3, color=colors[variant],
                            label=variant if epoch else None)
            ax.set(xlabel="layer ℓ+1", ylabel=label, title=f"{dataset} (dotted: init, solid: epoch {epochs})")
            ax.title.set_fontsize(9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_training(rows, datasets, variants, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 3.6), squeeze=False)
    for j, dataset in enumerate(datasets):
        ax = axes[0][j]
        for variant in variants:
            epochs = sorted({r["epoch"] for r in rows if r["dataset"] == dataset and r["variant"] == variant})
            srr = [np.mean([r["srr"] for r in rows if r["dataset"] == dataset and r["variant"] == variant
                            and r["epoch"] == e and r["site"] == "out"]) for e in epochs]
            ax.plot(epochs, srr, marker="o", ms=3, label=variant)
        ax.set(xlabel="epoch", ylabel="model μ_SRR (mean over layers)", title=dataset)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
