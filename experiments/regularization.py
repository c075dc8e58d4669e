"""Experiment — SRR as a regulariser, HU24 §6 on CIFAR-10 (MATH.md §6).

``loss = CE + η · μ_SRR(f_L(detach(Z^{L−1})))`` — the last layer only, its input detached, as
HU24 use it — through :class:`srr.measurement.SRRRegularizer` (ε = 0.1, λ = 0.1, the layer's own
heads as subspaces), against CE alone, for η ∈ {1e-4, 1e-3, 1e-2}.

Setting: a ``crate_micro``-shaped CRATE (``--width`` 64, ``--depth`` 6, 4 heads, 65 tokens per
image) trained on the full CIFAR-10 (JPEG) training set with augmentation (random crop with
4 px padding, horizontal flip), Adam, learning rate 1e-3 with cosine decay, batch 128,
``--epochs`` epochs; test accuracy on the full 10,000-image test set. Every arm is run with the
same seeds (``--seeds``): for one seed, all arms share the initial weights, the batch order and
the augmentation draws, so differences are **paired** and reported as mean ± standard deviation
of the paired difference. HU24 used CRATE-Tiny for 200 epochs; this is the scale one CPU
affords, and its numbers are what they are.

So that η means the same thing across scales, each run also records the ratio
‖∇_θ η·μ_SRR‖ / ‖∇_θ CE‖ over the last layer's parameters θ, on 4 fixed training batches, at
initialisation and at the end.

Run: ``python -m experiments.regularization [--workers 2] [--seeds 3] [--epochs 3]`` or ``--quick``;
``--device cuda`` trains on a GPU. Writes ``runs.csv``, ``table.csv``/``table.md``,
``summary.json``, ``regularization.png``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from experiments._common import markdown_table, mean_std, parse_args, pyplot, read_csv, summary, write_csv, write_json
from experiments._pool import run_jobs

NAME = "regularization"
ETAS = (0.0, 1e-4, 1e-3, 1e-2)
BATCH, LR = 128, 1e-3


def gradient_ratio(model, reg, data, *, batches: int = 4, batch_size: int = 128) -> float:
    """‖∇ reg‖ / ‖∇ CE‖ over the last layer's parameters, summed over ``batches`` fixed batches."""
    import torch
    import torch.nn.functional as F

    params = list(model.blocks()[-1].parameters())
    X, y = data
    was = model.training
    model.train()
    sums = {"ce": [torch.zeros_like(p) for p in params], "reg": [torch.zeros_like(p) for p in params]}
    for b in range(batches):
        xb, yb = X[b * batch_size:(b + 1) * batch_size], y[b * batch_size:(b + 1) * batch_size]
        ce = F.cross_entropy(model(xb), yb)
        reg_value = reg(yb)
        for key, value in (("ce", ce), ("reg", reg_value)):
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            for acc, g in zip(sums[key], grads):
                if g is not None:
                    acc += g
    model.train(was)
    norm = {k: torch.sqrt(sum((g**2).sum() for g in v)).item() for k, v in sums.items()}
    return norm["reg"] / norm["ce"] if norm["ce"] > 0 else float("nan")


def run_one(job: dict) -> dict:
    """Train one arm for one seed and return its row (module level: runs in a worker process)."""

    from experiments import _cifar
    from experiments._common import seed_everything
    from experiments._train import evaluate, fit
    from srr.measurement import SRRRegularizer

    train_set, train, test = _cifar.job_data(job, augment=True)
    device = train[0].device
    seed_everything(job["seed"])
    model = _cifar.model("crate", width=job["width"], depth=job["depth"]).to(device)
    # the ratio is measured for every arm (weight 1 for the CE arm's reference regulariser)
    weight = job["eta"] or 1.0
    reg = SRRRegularizer(model, layers=-1, weight=weight, eps=0.1, lam=0.1, subspaces="model",
                         detach_input=True)
    probe = tuple(t[:512] for t in train)
    ratio_init = gradient_ratio(model, reg, probe)
    seed_everything(job["seed"])  # the ratio's forward passes must not shift the paired draws
    result = fit(model, train, epochs=job["epochs"], batch_size=BATCH, lr=LR, seed=job["seed"],
                 regularizer=reg if job["eta"] > 0 else None, augment=train_set.augment_batch, cosine=True)
    ratio_end = gradient_ratio(model, reg, probe)
    reg.close()
    test_loss, test_acc = evaluate(model, test)
    return {**{k: v for k, v in job.items() if k not in ("data_dir",)}, "train_ce": result.train_loss,
            "test_ce": test_loss, "test_acc": test_acc, "seconds": result.seconds,
            "grad_ratio_init": ratio_init / weight * job["eta"], "grad_ratio_end": ratio_end / weight * job["eta"],
            "grad_ratio_per_unit_eta_init": ratio_init / weight, "grad_ratio_per_unit_eta_end": ratio_end / weight}


def jobs_for(args) -> list[dict]:
    common = dict(epochs=args.epochs, width=args.width, depth=args.depth, device=args.device,
                  data_dir=str(args.data_dir), train_subset=512 if args.quick else None,
                  test_subset=500 if args.quick else None)
    etas = (0.0, 1e-2) if args.quick else ETAS
    return [{**common, "eta": eta, "seed": seed} for seed in args.seed_list for eta in etas]


def aggregate(runs: list[dict]) -> list[dict]:
    """Per η: mean ± std of test accuracy, and the paired difference to CE alone (same seed)."""
    base = {r["seed"]: r["test_acc"] for r in runs if r["eta"] == 0}
    table = []
    for eta in sorted({r["eta"] for r in runs}):
        rows = [r for r in runs if r["eta"] == eta]
        mean, std = mean_std([r["test_acc"] for r in rows])
        diffs = [r["test_acc"] - base[r["seed"]] for r in rows if r["seed"] in base]
        d_mean, d_std = mean_std(diffs) if diffs else (float("nan"), float("nan"))
        table.append({"eta": eta, "seeds": len(rows), "test_acc_mean": mean, "test_acc_std": std,
                      "paired_delta_mean": d_mean, "paired_delta_std": d_std,
                      "grad_ratio_init": float(np.mean([r["grad_ratio_init"] for r in rows])),
                      "grad_ratio_end": float(np.mean([r["grad_ratio_end"] for r in rows])),
                      "grad_ratio_per_unit_eta_end": float(np.mean([r["grad_ratio_per_unit_eta_end"] for r in rows]))})
    return table


def main(argv=None) -> dict:
    from experiments._cifar import data_dir

    args = parse_args(NAME, __doc__, argv, extra=[
        (("--seeds",), dict(type=int, default=None, help="paired seeds (default 3; quick 1)")),
        (("--epochs",), dict(type=int, default=None, help="epochs per run (default 3; quick 1)")),
        (("--width",), dict(type=int, default=None, help="token width d (default 64)")),
        (("--depth",), dict(type=int, default=None, help="layers (default 6)")),
        (("--workers",), dict(type=int, default=1, help="worker processes (one torch thread each)")),
        (("--device",), dict(default="cpu", help="torch device of the training (cpu, cuda)")),
        (("--data-dir",), dict(default=None, help="CIFAR-10 folder (default ../shared/data/cifar10)")),
        (("--from-csv",), dict(type=Path, default=None, help="skip training: tabulate the rows of this CSV"))])
    started = time.perf_counter()
    args.data_dir = data_dir(args.data_dir)
    args.seed_list = [args.seed + i for i in range(args.seeds or (1 if args.quick else 3))]
    args.epochs = args.epochs or (1 if args.quick else 3)
    args.width = args.width or (16 if args.quick else 64)
    args.depth = args.depth or (1 if args.quick else 6)
    jobs = jobs_for(args)

    done: list[dict] = []

    def progress(i, n, row):
        done.append(row)
        write_csv(args.out / "runs.partial.csv", done)  # survives an interrupted grid
        print(f"[{i}/{n}] η={row['eta']:g} seed {row['seed']}: test acc {row['test_acc']:.4f}, train CE "
              f"{row['train_ce']:.3f}, grad ratio {row['grad_ratio_init']:.2e} → {row['grad_ratio_end']:.2e} "
              f"({row['seconds']:.0f}s)", flush=True)

    if args.from_csv:
        runs = read_csv(args.from_csv)
    else:
        runs = run_jobs(run_one, jobs, workers=args.workers, progress=progress)
        write_csv(args.out / "runs.csv", runs)
        (args.out / "runs.partial.csv").unlink(missing_ok=True)
    table = aggregate(runs)
    write_csv(args.out / "table.csv", table)
    (args.out / "table.md").write_text(markdown_table(
        table, list(table[0]), {"test_acc_mean": ".4f", "test_acc_std": ".4f", "paired_delta_mean": "+.4f",
                                "paired_delta_std": ".4f", "grad_ratio_init": ".2e", "grad_ratio_end": ".2e",
                                "grad_ratio_per_unit_eta_end": ".2e"}))
    _plot(runs, table, args.out / "regularization.png")
    payload = summary(NAME, args, started, dataset="cifar10 (JPEG)", data_dir=str(args.data_dir),
                      model=f"crate, d {args.width}, depth {args.depth}, 4 heads, patch 4 (65 tokens)",
                      epochs=args.epochs, seeds=args.seed_list, workers=args.workers, device=args.device,
                      optimizer=f"adam lr {LR:g} cosine, batch {BATCH}, crop+flip augmentation",
                      regularizer="last layer, detached input, eps 0.1, lam 0.1, subspaces = the layer's heads",
                      runs=len(runs), table=table)
    write_json(args.out / "summary.json", payload)
    return payload


def _plot(runs, table, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    base = {r["seed"]: r["test_acc"] for r in runs if r["eta"] == 0}
    etas = [r["eta"] for r in table if r["eta"] > 0]
    for seed in sorted(base):
        pts = sorted((r["eta"], r["test_acc"] - base[seed]) for r in runs if r["seed"] == seed and r["eta"] > 0)
        axes[0].plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=3, alpha=0.6,
                     label=f"seed {seed}")
    rows = [r for r in table if r["eta"] > 0]
    axes[0].errorbar(etas, [100 * r["paired_delta_mean"] for r in rows],
                     yerr=[100 * r["paired_delta_std"] for r in rows], color="k", marker="s", capsize=3,
                     label="mean ± std (paired)")
    axes[0].axhline(0, color="grey", lw=1)
    axes[0].set(xscale="log", xlabel="η", ylabel="test accuracy − CE alone (points)",
                title="CE + η·μ_SRR(last layer) vs CE, paired by seed")
    axes[1].plot(etas, [r["grad_ratio_init"] for r in rows], marker="o", label="at init")
    axes[1].plot(etas, [r["grad_ratio_end"] for r in rows], marker="o", label="at the end")
    axes[1].set(xscale="log", yscale="log", xlabel="η", ylabel="‖∇ η·μ_SRR‖ / ‖∇ CE‖ (last layer)")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
