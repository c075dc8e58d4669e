"""Experiment 5 — the variant zoo: every registered CRATE variant at the same budget.

Each variant of :data:`srr.models.VARIANTS` (the public CRATE, HU24's C/N/T/Fix/Identity, CRATE-α,
and the two that no paper trained: ``crate_exact``, the exact gradient step on R^c (E6), and
``crate_derived``, every layer built by ``srr.derive`` from its objective) is built as
``crate_nano`` with patch 2 (d 64, 4 layers, 4 heads of 16; 16 patches + CLS = 17 tokens per 8×8
``digits`` image, the fewest on which a rate is not saturated) and trained with the
same budget: Adam, learning rate 1e-3, batch 64, the same number of epochs, plain cross-entropy,
several seeds. Reported: test accuracy (mean ± std over seeds), parameters, and throughput
(images/s, best of 3 after a warm-up) of a forward pass and of a forward + backward pass on a
batch of 256, measured on the same machine in the same process.

Run: ``python -m experiments.zoo`` (see ``summary.json`` for the time it took) or ``--quick``.
Writes ``runs.csv``, ``table.csv``/``table.md``, ``summary.json`` and ``zoo.png``.
"""
from __future__ import annotations

import time

import torch

from experiments._common import (markdown_table, mean_std, parse_args, pyplot, seed_everything, summary, write_csv,
                                 write_json)
from experiments._train import evaluate, fit, load_split, throughput
from srr.models import create_model, list_variants

NAME = "zoo"
PATCH = 2  # 17 tokens per image


def main(argv=None) -> dict:
    args = parse_args(NAME, __doc__, argv, extra=[(("--epochs",), dict(type=int, default=None)),
                                                  (("--seeds",), dict(type=int, default=None))])
    started = time.perf_counter()
    epochs = args.epochs or (1 if args.quick else 20)
    seeds = [args.seed + i for i in range(args.seeds or (1 if args.quick else 3))]
    train, test = load_split("digits", "train"), load_split("digits", "test")
    if args.quick:
        train = (train[0][:128], train[1][:128])
    variants = list_variants()
    runs, table = [], []
    for variant in variants:
        accs = []
        for seed in seeds:
            seed_everything(seed)
            model = create_model("crate_nano", variant=variant, patch_size=PATCH,
                                 **(dict(depth=1) if args.quick else {}))
            result = fit(model, train, epochs=epochs, batch_size=64, lr=1e-3, seed=seed)
            test_loss, test_acc = evaluate(model, test)
            accs.append(test_acc)
            runs.append({"variant": variant, "seed": seed, "epochs": epochs, "train_loss": result.train_loss,
                         "test_loss": test_loss, "test_acc": test_acc, "train_seconds": result.seconds})
        params = sum(p.numel() for p in model.parameters())
        fwd = throughput(model, test[0], batch_size=256, repeats=1 if args.quick else 3)
        fwd_bwd = throughput(model, test[0], batch_size=256, repeats=1 if args.quick else 3, train=True)
        mean, std = mean_std(accs)
        table.append({"variant": variant, "params": params, "test_acc_mean": mean, "test_acc_std": std,
                      "forward_img_per_s": fwd, "train_img_per_s": fwd_bwd, "seeds": len(seeds), "epochs": epochs})
        print(f"{variant:15s} acc {mean:.3f} ± {std:.3f}  params {params}  fwd {fwd:.0f} img/s", flush=True)
    write_csv(args.out / "runs.csv", runs)
    write_csv(args.out / "table.csv", table)
    (args.out / "table.md").write_text(markdown_table(
        table, ["variant", "params", "test_acc_mean", "test_acc_std", "forward_img_per_s", "train_img_per_s"],
        {"test_acc_mean": ".3f", "test_acc_std": ".3f", "forward_img_per_s": ".0f", "train_img_per_s": ".0f"}))
    _plot(table, args.out / "zoo.png")
    payload = summary(NAME, args, started, model=f"crate_nano, patch {PATCH} (17 tokens)", dataset="digits",
                      epochs=epochs, seeds=seeds,
                      optimizer="adam lr 1e-3 batch 64, plain cross-entropy, no augmentation",
                      threads=torch.get_num_threads(), table=table)
    write_json(args.out / "summary.json", payload)
    return payload


def _plot(table, path):
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [r["variant"] for r in table]
    a.bar(names, [r["test_acc_mean"] for r in table], yerr=[r["test_acc_std"] for r in table], capsize=3)
    a.set(ylabel="test accuracy (digits)", ylim=(0, 1))
    b.bar(names, [r["forward_img_per_s"] for r in table])
    b.set(ylabel="forward images/s (batch 256)", yscale="log")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
