"""Experiment 4 — SRR as a regulariser (HU24 §6; MATH.md §6).

``loss = CE + η · mean_{ℓ∈S} μ_SRR(f_ℓ(detach(Z^{ℓ−1})))`` through :class:`srr.measure.SRRRegularizer`
(the library's hooks; ``detach_input=True`` is HU24's per-layer form), against plain CE:

- CRATE: ``crate_nano`` (d 64, 4 layers, 4 heads) of each variant ``crate``, ``crate_c``,
  ``crate_n``, ``crate_t``; S = the last layer and S = all layers; η ∈ {1e-4, 1e-3, 1e-2, 1e-1};
  subspaces = the layer's own heads.
- non-CRATE: a torchvision ``VisionTransformer`` of the same size (8×8 images, patch 2,
  4 encoder layers, width 64, 4 heads, MLP 128), last layer, η ∈ {1e-3, 1e-2}, each subspace
  policy of ``srr.measure``: ``model`` (the block's query heads), ``data`` (k-means + PCA on
  the batch, frozen after the first fit), ``learned`` (orthonormal U trained with the model).

Data: ``digits`` (1437 train / 360 test images), no augmentation. Adam, learning rate 1e-3,
batch 64, a fixed number of epochs, ε = 0.1, λ = 0.1; every configuration with several seeds;
the test accuracy after the last epoch, mean ± std over seeds. HU24 trained CRATE-Tiny on
CIFAR for 200 epochs; this is a much smaller setting, and its numbers are what they are.

Run: ``python -m experiments.regularization [--seeds 5] [--epochs 15] [--workers 2]`` or ``--quick``.
Writes ``runs.csv`` (one row per run), ``table.csv``/``table.md``, ``summary.json``, ``regularization.png``.
"""
from __future__ import annotations

import time
from pathlib import Path

from experiments._common import markdown_table, read_csv, mean_std, parse_args, pyplot, summary, write_csv, write_json
from experiments._pool import run_jobs

NAME = "regularization"
VARIANTS = ("crate", "crate_c", "crate_n", "crate_t")
ETAS = (1e-4, 1e-3, 1e-2, 1e-1)
VIT_ETAS = (1e-3, 1e-2)
POLICIES = ("model", "data", "learned")


def small_vit():
    """A torchvision ViT for 1×8×8 images: patch 2, 4 layers, width 64, 4 heads, MLP 128, 10 classes."""
    from torch import nn
    from torchvision.models import VisionTransformer

    vit = VisionTransformer(image_size=8, patch_size=2, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128,
                            num_classes=10)
    vit.conv_proj = nn.Conv2d(1, 64, kernel_size=2, stride=2)  # grey images
    return vit


def run_one(job: dict) -> dict:
    """Train one model of the grid and return its row (module level: runs in a worker process)."""
    from experiments._common import seed_everything
    from experiments._train import evaluate, fit, load_split
    from srr.measurement import SRRRegularizer
    from srr.models import create_model

    seed_everything(job["seed"])
    train, test = load_split("digits", "train"), load_split("digits", "test")
    if job.get("train_subset"):
        train = (train[0][: job["train_subset"]], train[1][: job["train_subset"]])
    if job["model"] == "vit":
        model = small_vit()
    else:
        model = create_model("crate_nano", variant=job["variant"], **job.get("overrides", {}))
    reg, extra = None, ()
    if job["eta"] > 0:
        layers = list(range(len(model.blocks()))) if job["layers"] == "all" else -1
        reg = SRRRegularizer(model, layers=layers, weight=job["eta"], subspaces=job["policy"])
        extra = tuple(reg.parameters())
    result = fit(model, train, epochs=job["epochs"], batch_size=64, lr=1e-3, seed=job["seed"],
                 regularizer=reg, extra_params=extra)
    if reg is not None:
        reg.close()
    test_loss, test_acc = evaluate(model, test)
    return {**{k: v for k, v in job.items() if k != "overrides"}, "train_loss": result.train_loss,
            "test_loss": test_loss, "test_acc": test_acc, "seconds": result.seconds}


def jobs_for(seeds, epochs, *, quick: bool) -> list[dict]:
    variants, etas, vit_etas, policies = VARIANTS, ETAS, VIT_ETAS, POLICIES
    extra = {}
    if quick:
        variants, etas, vit_etas, policies = ("crate",), (1e-2,), (1e-2,), ("model",)
        extra = dict(train_subset=128, overrides=dict(depth=1))
    jobs = []
    for seed in seeds:
        for variant in variants:
            base = dict(model="crate", variant=variant, policy="model", seed=seed, epochs=epochs, **extra)
            jobs.append({**base, "layers": "none", "eta": 0.0})
            for layers in ("last", "all"):
                jobs += [{**base, "layers": layers, "eta": eta} for eta in etas]
        vit = dict(model="vit", variant="vit", seed=seed, epochs=epochs,
                   **({"train_subset": extra["train_subset"]} if quick else {}))
        jobs.append({**vit, "layers": "none", "eta": 0.0, "policy": "-"})
        jobs += [{**vit, "layers": "last", "eta": eta, "policy": p} for eta in vit_etas for p in policies]
    return jobs


def main(argv=None) -> dict:
    args = parse_args(NAME, __doc__, argv, extra=[
        (("--seeds",), dict(type=int, default=None, help="seeds per configuration (default 5; quick 1)")),
        (("--epochs",), dict(type=int, default=None, help="epochs per run (default 15; quick 1)")),
        (("--workers",), dict(type=int, default=1, help="worker processes (one torch thread each)")),
        (("--from-csv",), dict(type=Path, default=None, help="skip training: tabulate the rows of this CSV"))])
    started = time.perf_counter()
    seeds = [args.seed + i for i in range(args.seeds or (1 if args.quick else 5))]
    epochs = args.epochs or (1 if args.quick else 15)
    jobs = jobs_for(seeds, epochs, quick=args.quick)

    done: list[dict] = []

    def progress(i, n, row):
        done.append(row)
        write_csv(args.out / "runs.partial.csv", done)  # survives an interrupted grid
        print(f"[{i}/{n}] {row['model']} {row['variant']} {row['layers']} η={row['eta']:g} {row['policy']} "
              f"seed {row['seed']}: test acc {row['test_acc']:.3f} ({row['seconds']:.0f}s)", flush=True)

    runs = read_csv(args.from_csv) if args.from_csv else run_jobs(run_one, jobs, workers=args.workers, progress=progress)
    write_csv(args.out / "runs.csv", runs)
    (args.out / "runs.partial.csv").unlink(missing_ok=True)
    table = aggregate(runs)
    write_csv(args.out / "table.csv", table)
    (args.out / "table.md").write_text(markdown_table(
        table, ["model", "layers", "policy", "eta", "test_acc_mean", "test_acc_std", "delta_vs_ce", "seeds"],
        {"test_acc_mean": ".4f", "test_acc_std": ".4f", "delta_vs_ce": "+.4f"}))
    _plot(table, args.out / "regularization.png")
    payload = summary(NAME, args, started, dataset="digits", epochs=epochs, seeds=seeds, workers=args.workers,
                      optimizer="adam lr 1e-3 batch 64, constant, no augmentation", eps=0.1, lam=0.1,
                      runs=len(runs), table=table)
    write_json(args.out / "summary.json", payload)
    return payload


def aggregate(runs: list[dict]) -> list[dict]:
    """Mean ± std of test accuracy per (model variant, layers, policy, η), with the change vs CE."""
    groups: dict[tuple, list[float]] = {}
    for r in runs:
        groups.setdefault((r["variant"], r["layers"], r["policy"], r["eta"]), []).append(r["test_acc"])
    baseline = {k[0]: mean_std(v)[0] for k, v in groups.items() if k[1] == "none"}
    table = []
    for (variant, layers, policy, eta), accs in groups.items():
        mean, std = mean_std(accs)
        table.append({"model": variant, "layers": layers, "policy": policy, "eta": eta, "test_acc_mean": mean,
                      "test_acc_std": std, "delta_vs_ce": mean - baseline[variant], "seeds": len(accs)})
    return table


def _plot(table, path):
    plt = pyplot()
    models = list(dict.fromkeys(r["model"] for r in table))
    fig, axes = plt.subplots(1, len(models), figsize=(3.3 * len(models), 3.4), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        rows = [r for r in table if r["model"] == model]
        base = next(r for r in rows if r["layers"] == "none")
        ax.axhline(base["test_acc_mean"], color="k", lw=1, label="CE")
        ax.axhspan(base["test_acc_mean"] - base["test_acc_std"], base["test_acc_mean"] + base["test_acc_std"],
                   color="k", alpha=0.1)
        series = sorted({(r["layers"], r["policy"]) for r in rows if r["layers"] != "none"})
        for layers, policy in series:
            pts = sorted((r["eta"], r["test_acc_mean"], r["test_acc_std"]) for r in rows
                         if r["layers"] == layers and r["policy"] == policy)
            label = f"{layers}" + (f" ({policy})" if model == "vit" else "")
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", ms=3,
                        capsize=2, label=label)
        ax.set(xscale="log", xlabel="η", title=model)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("test accuracy (digits)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
