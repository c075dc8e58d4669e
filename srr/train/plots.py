"""PNG plots of a run from its ``metrics.jsonl`` rows (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[dict], path: Path, steps: list[tuple[float, float]] | None = None) -> Path:
    """Loss and accuracy against the epoch (train and val) side by side; ``steps``, ``(epoch reached, loss)``
    of each optimiser step, adds the per-step training loss, so that a short run is a curve, not two dots.
    Epoch ticks are integers."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    if steps:
        ax_loss.plot([e for e, _ in steps], [v for _, v in steps], lw=0.8, alpha=0.6, color="tab:gray",
                     label="train, per step (loss with the SRR term)")
    labels = {"train": "train (label smoothing, augmentation)", "val": "val"}
    for split in ("train", "val"):
        if any(f"{split}_loss" in r for r in rows):
            ax_loss.plot(epochs, [r.get(f"{split}_loss") for r in rows], marker="o", label=labels[split])
            ax_acc.plot(epochs, [r.get(f"{split}_accuracy") for r in rows], marker="o", label=labels[split])
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(left=0 if steps else None)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_srr_layers(rows: list[dict], path: Path) -> Path | None:
    """μ_SRR of each layer's output against the layer (0-based, as everywhere in srr), one line per
    epoch, coloured by epoch (colour bar); None if never measured."""
    rows = [r for r in rows if r.get("srr_per_layer")]
    if not rows:
        return None
    plt = _pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.5, 4))
    epochs = [row["epoch"] for row in rows]
    norm = Normalize(vmin=min(epochs), vmax=max(max(epochs), min(epochs) + 1))
    cmap = plt.get_cmap("viridis")
    for row in rows:
        values = row["srr_per_layer"]
        ax.plot(range(len(values)), values, marker="o", color=cmap(norm(row["epoch"])))
    ax.set(xlabel=r"layer $\ell$ (0-based; output tokens $Z^{\ell+1}$)", ylabel="μ_SRR (λ‖Z‖₀ + Rᶜ − R)",
           title="sparse rate reduction per layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="epoch")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
