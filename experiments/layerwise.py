"""Experiment — layer-wise compression and sparsity on CIFAR-10 (YU23 Figs. 3–4; HU24 Figs. 2–3).

For each variant (crate, crate_c, crate_n, crate_t, crate_exact, crate_alpha, and ToST's ``tost``) a ``crate_micro``-
shaped CRATE (``--width`` 64, ``--depth`` 6, 4 heads, patch 4: 65 tokens per image) is trained on
the full CIFAR-10 (JPEG) training set with augmentation (Adam 1e-3, cosine, batch 128) and
measured at initialisation and after every epoch on ``--samples`` un-augmented training images,
in **both** conventions (``experiments/_cifar.py``), side by side:

- **raw** (HU24): R^c (E2) of the raw tokens with the layer's own U^ℓ, ε = 0.1; at the layer output
  Z^{ℓ+1}, and at Z^ℓ / Z^{ℓ+½} to see what the MSSA half-step does;
- **yu23** (YU23's figures): R^c of LN₁(Z^ℓ) projected by U^ℓ, heads unit-normalised, ε² = 0.01;
  its "MSSA" comparison applies the same LN₁ to Z^{ℓ+½};
- sparsity: the fraction of exact zeros of Z^{ℓ+1} (the ISTA output; for crate_alpha, whose
  ISTA codes are added back to the residual stream, the residual stream itself).

The claims under test: along the layers R^c falls (compression) and sparsity rises; training makes
both stronger; the MSSA half-step lowers R^c.

Run: ``python -m experiments.layerwise [--workers 2] [--epochs 2]`` or ``--quick``; ``--device cuda``.
Writes ``layers.csv`` (variant, epoch, layer, every quantity), ``table.csv``/``table.md``,
``summary.json``, ``layerwise_raw.png``, ``layerwise_yu23.png``, ``training.png``.
"""
from __future__ import annotations

import time
from pathlib import Path

from experiments._common import markdown_table, parse_args, pyplot, read_csv, summary, write_csv, write_json
from experiments._pool import run_jobs

NAME = "layerwise"
VARIANTS = ("crate", "crate_c", "crate_n", "crate_t", "crate_exact", "crate_alpha", "tost")
BATCH, LR = 128, 1e-3


def run_one(job: dict) -> dict:
    """Train one variant, measuring every layer at init and after each epoch (in a worker process)."""
    import torch

    from experiments import _cifar
    from experiments._common import seed_everything
    from experiments._train import evaluate, fit

    train_set, train, test = _cifar.job_data(job, augment=True)
    device = train[0].device
    probe = train[0][torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(1))[: job["samples"]]
                     .to(device)]
    seed_everything(job["seed"])
    model = _cifar.model(job["variant"], width=job["width"], depth=job["depth"]).to(device)
    rows: list[dict] = []

    def record(epoch, net):
        rows.extend({"variant": job["variant"], "epoch": epoch, **r} for r in _cifar.layer_stats(net, probe))

    result = fit(model, train, epochs=job["epochs"], batch_size=BATCH, lr=LR, seed=job["seed"], on_epoch=record,
                 augment=train_set.augment_batch, cosine=True)
    test_loss, test_acc = evaluate(model, test)
    return {"variant": job["variant"], "test_acc": test_acc, "test_ce": test_loss, "train_ce": result.train_loss,
            "seconds": result.seconds, "rows": rows}


def _count(rows, before: str, after: str) -> str:
    return f"{sum(r[after] < r[before] for r in rows)}/{len(rows)}"


def _trend(rows, key: str, fmt: str = ".1f") -> str:
    return f"{format(rows[0][key], fmt)} → {format(rows[-1][key], fmt)}"


def table_rows(results: list[dict], layers: list[dict]) -> list[dict]:
    table = []
    last = max(r["epoch"] for r in layers)
    for res in results:
        v = res["variant"]
        init = sorted((r for r in layers if r["variant"] == v and r["epoch"] == 0), key=lambda r: r["layer"])
        end = sorted((r for r in layers if r["variant"] == v and r["epoch"] == last), key=lambda r: r["layer"])
        table.append({
            "variant": v, "test_acc": res["test_acc"],
            "raw Rc out, layer 0 → L-1, init": _trend(init, "Rc[0.1]"),
            "raw Rc out, trained": _trend(end, "Rc[0.1]"),
            "raw: MSSA lowers Rc, init": _count(init, "Rc_in[0.1]", "Rc_half[0.1]"),
            "raw: MSSA lowers Rc, trained": _count(end, "Rc_in[0.1]", "Rc_half[0.1]"),
            "yu23 Rc in, layer 0 → L-1, init": _trend(init, "Rc_yu23_in"),
            "yu23 Rc in, trained": _trend(end, "Rc_yu23_in"),
            "yu23: MSSA lowers Rc, init": _count(init, "Rc_yu23_in", "Rc_yu23_half"),
            "yu23: MSSA lowers Rc, trained": _count(end, "Rc_yu23_in", "Rc_yu23_half"),
            "zeros, layer 0 → L-1, init": _trend(init, "zero_fraction", ".3f"),
            "zeros, trained": _trend(end, "zero_fraction", ".3f"),
            "TSSA lowers Rc_var, init": _count(init, "Rcvar_in[0.1]", "Rcvar_half[0.1]") if "Rcvar_in[0.1]" in init[0]
            else "-",
            "TSSA lowers Rc_var, trained": _count(end, "Rcvar_in[0.1]", "Rcvar_half[0.1]") if "Rcvar_in[0.1]" in end[0]
            else "-",
        })
    return table


def main(argv=None) -> dict:
    from experiments._cifar import data_dir

    args = parse_args(NAME, __doc__, argv, extra=[
        (("--epochs",), dict(type=int, default=None, help="training epochs (default 2)")),
        (("--width",), dict(type=int, default=None, help="token width d (default 64)")),
        (("--depth",), dict(type=int, default=None, help="layers (default 6)")),
        (("--samples",), dict(type=int, default=None, help="training images measured (default 256)")),
        (("--workers",), dict(type=int, default=1, help="worker processes (one torch thread each)")),
        (("--device",), dict(default="cpu", help="torch device (cpu, cuda)")),
        (("--data-dir",), dict(default=None, help="CIFAR-10 folder (default ../shared/data/cifar10)")),
        (("--from-csv",), dict(type=Path, default=None, help="skip training: re-plot this layers.csv"))])
    started = time.perf_counter()
    args.data_dir = data_dir(args.data_dir)
    epochs = args.epochs or (1 if args.quick else 2)
    width, depth = args.width or (16 if args.quick else 64), args.depth or (2 if args.quick else 6)
    samples = args.samples or (32 if args.quick else 256)
    variants = ("crate", "crate_n") if args.quick else VARIANTS
    common = dict(epochs=epochs, width=width, depth=depth, samples=samples, seed=args.seed, device=args.device,
                  data_dir=str(args.data_dir), train_subset=256 if args.quick else None,
                  test_subset=200 if args.quick else None)
    if args.from_csv:
        layers = read_csv(args.from_csv)
        results = read_csv(args.from_csv.with_name("results.csv"))
    else:
        results = run_jobs(run_one, [{**common, "variant": v} for v in variants], workers=args.workers,
                           progress=lambda i, n, r: print(f"[{i}/{n}] {r['variant']}: test acc {r['test_acc']:.3f} "
                                                          f"({r['seconds']:.0f} s)", flush=True))
        layers = [row for r in results for row in r.pop("rows")]
        write_csv(args.out / "layers.csv", layers)
        write_csv(args.out / "results.csv", results)
    table = table_rows(results, layers)
    write_csv(args.out / "table.csv", table)
    (args.out / "table.md").write_text(markdown_table(table, list(table[0]), {"test_acc": ".3f"}))
    _plot_layers(layers, variants, epochs, "raw", args.out / "layerwise_raw.png")
    _plot_layers(layers, variants, epochs, "yu23", args.out / "layerwise_yu23.png")
    _plot_training(layers, variants, args.out / "training.png")
    payload = summary(NAME, args, started, dataset="cifar10 (JPEG)", data_dir=str(args.data_dir), epochs=epochs,
                      model=f"crate_micro shape: d {width}, depth {depth}, 4 heads, patch 4 (65 tokens)",
                      optimizer=f"adam lr {LR:g} cosine, batch {BATCH}, crop+flip augmentation",
                      measured_samples=samples, workers=args.workers, device=args.device,
                      conventions={"raw": "E2 on Z, layer's own U, eps 0.1",
                                   "yu23": "LN1(Z) U, heads unit-normalised, eps^2 0.01"},
                      results=results, table=table)
    write_json(args.out / "summary.json", payload)
    return payload


CONVENTIONS = {"raw": (("Rc[0.1]", "raw R^c(Z^{ℓ+1}; U^ℓ), ε = 0.1"),),
               "yu23": (("Rc_yu23_in", "R^c(LN₁(Z^ℓ) U^ℓ), unit heads, ε² = 0.01"),)}


def _plot_layers(rows, variants, epochs, convention, path):
    plt = pyplot()
    metrics = (*CONVENTIONS[convention], ("zero_fraction", "fraction of zeros in Z^{ℓ+1}"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.4 * len(metrics), 3.8), squeeze=False)
    colors = dict(zip(variants, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, (metric, label) in zip(axes[0], metrics):
        for variant in variants:
            for epoch, style in ((0, ":"), (epochs, "-")):
                sel = sorted((r["layer"], r[metric]) for r in rows if r["variant"] == variant and r["epoch"] == epoch)
                ax.plot([layer for layer, _ in sel], [v for _, v in sel], style, marker="o", ms=3,
                        color=colors[variant], label=variant if epoch else None)
        ax.set(xlabel="layer ℓ (0-based)", ylabel=label)
        ax.set_title(f"{convention} convention — dotted: init, solid: after {epochs} epochs", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("CIFAR-10 (JPEG), 65 tokens per image", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_training(rows, variants, path):
    plt = pyplot()
    metrics = (("Rc[0.1]", "raw R^c, last layer"), ("Rc_yu23_in", "yu23 R^c, last layer's input"),
               ("zero_fraction", "zeros of the last layer's output"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    last = max(r["layer"] for r in rows)
    for ax, (metric, label) in zip(axes[0], metrics):
        for variant in variants:
            sel = sorted((r["epoch"], r[metric]) for r in rows if r["variant"] == variant and r["layer"] == last)
            ax.plot([e for e, _ in sel], [v for _, v in sel], marker="o", ms=3, label=variant)
        ax.set(xlabel="epoch", ylabel=label)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
