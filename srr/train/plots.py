"""PNG plots of a run from its ``metrics.jsonl`` rows (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[dict], path: Path) -> Path:
    """Loss and accuracy per epoch (train and val) side by side."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    labels = {"train": "train (label smoothing, augmentation)", "val": "val"}
    for split in ("train", "val"):
        if any(f"{split}_loss" in r for r in rows):
            ax_loss.plot(epochs, [r.get(f"{split}_loss") for r in rows], marker=".", label=labels[split])
            ax_acc.plot(epochs, [r.get(f"{split}_accuracy") for r in rows], marker=".", label=labels[split])
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_srr_layers(rows: list[dict], path: Path) -> Path | None:
    """μ_SRR of each layer's output against the layer (1..L), one line per epoch (yellow = latest);
    None if never measured."""
    rows = [r for r in rows if r.get("srr_per_layer")]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    for i, row in enumerate(rows):
        values = row["srr_per_layer"]
        color = cmap(i / max(len(rows) - 1, 1))
        label = f"epoch {row['epoch']}" if i in (0, len(rows) - 1) else None
        ax.plot(range(1, len(values) + 1), values, marker="o", color=color, label=label)
    ax.set(xlabel="layer", ylabel="μ_SRR (λ‖Z‖₀ + Rᶜ − R)", title="sparse rate reduction per layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
