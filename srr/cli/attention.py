"""``srr attention RUN_OR_CHECKPOINT``: a PNG grid of each head's CLS attention and the PCA of patch
features for a few images of the model's data (:func:`srr.visualize.plot_attention`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import DataDir, Dataset, Device, Download, ModelName, Pretrained, SPLIT_HELP
from .errors import USAGE, fail, stdout, user_errors


def attention_command(
    checkpoint: Annotated[Optional[Path], typer.Argument(
        metavar="[RUN_OR_CHECKPOINT]", help="A run folder or an srr checkpoint (.pt). Or leave it out and pass "
                                            "--pretrained.")] = None,
    images: Annotated[int, typer.Option(help="How many images, one row each, taking the classes in turn (each "
                                             "row says its true and predicted class).")] = 4,
    layer: Annotated[int, typer.Option(help="Layer, 0-based; -1: the last.")] = -1,
    split: Annotated[str, typer.Option(help=f"{SPLIT_HELP}.")] = "test",
    model_name: ModelName = None,
    pretrained: Pretrained = None,
    dataset: Dataset = None,
    data_dir: DataDir = None,
    download: Download = False,
    device: Device = "auto",
    out: Annotated[Optional[Path], typer.Option(
        help="PNG to write. Default: <run>/plots/attention_layer<L>.png, else beside the checkpoint.")] = None,
) -> None:
    """Attention maps (each head's CLS attention over the patches) and a PCA of patch features, as a PNG."""
    import torch

    from srr.visualize import plot_attention

    from .checkpoints import check_data_options, check_out_folder, check_source, load_any, load_split

    with user_errors(USAGE):
        if images < 1:
            raise ValueError(f"--images must be a positive integer, got {images}")
        if out is not None:
            check_out_folder(out.parent, "--out's folder")
        check_source(checkpoint, model_name=model_name, pretrained=pretrained)
        dev = check_data_options(split=split, dataset=dataset, data_dir=data_dir, download=download, device=device)
    with user_errors():
        path, model, train_config = load_any(checkpoint, model_name=model_name, pretrained=pretrained, device=dev)
        depth = len(model.blocks())
        if not -depth <= layer < depth:
            raise fail(f"--layer must be in [0, {depth - 1}] (or negative, from the end), got {layer}", USAGE)
        data = load_split(model, train_config, split=split, dataset=dataset, data_dir=data_dir, download=download)
        targets, names = _labels(data)
        chosen = spread_over_classes(targets, min(images, len(data)))
        batch = torch.stack([data[i][0] for i in chosen]).to(dev)  # (B, C, H, W)
        with torch.no_grad():
            predicted = model(batch).argmax(-1).tolist()

        def name(k: int) -> str:
            return names[k] if names and 0 <= k < len(names) else str(k)

        rows = [f"true {name(int(targets[i]))}\npredicted {name(p)}" for i, p in zip(chosen, predicted)]
        index = layer % depth
        target = out or _default_out(Path(path), index)
        written = plot_attention(model, batch, target, layer=index, row_labels=rows)
    stdout().print(f"wrote {written}", highlight=False)


def _labels(data, limit: int = 20000):
    """``(labels (n,), class names or None)`` of a dataset: read off in-memory tensors where it has them,
    else from its items (the first ``limit``)."""
    import torch

    base, index = data, None
    if hasattr(data, "indices") and hasattr(data, "dataset"):  # a Subset (a run's train or val split)
        base, index = data.dataset, torch.as_tensor(list(data.indices), dtype=torch.long)
    names = getattr(base, "classes", None)
    tensors = getattr(base, "tensors", None)
    if tensors is not None:
        labels = torch.as_tensor(tensors[1])
        return (labels if index is None else labels[index]), names
    return torch.tensor([int(data[i][1]) for i in range(min(len(data), limit))]), names


def spread_over_classes(labels, count: int) -> list[int]:
    """``count`` indices that take the classes in turn (the first image of each class, then the second, ...),
    so that a class-sorted split does not show one class only."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels.tolist()):
        by_class.setdefault(int(y), []).append(i)
    chosen, rank = [], 0
    while len(chosen) < count and any(rank < len(v) for v in by_class.values()):
        chosen += [v[rank] for _, v in sorted(by_class.items()) if rank < len(v)][: count - len(chosen)]
        rank += 1
    return chosen


def _default_out(path: Path, layer: int) -> Path:
    name = f"attention_layer{layer}.png"
    if path.is_dir():  # a save_pretrained folder (a run folder arrives as its checkpoints/latest.pt)
        return path / name
    if path.parent.name == "checkpoints":
        return path.parent.parent / "plots" / name
    return path.with_name(f"{path.stem}-{name}")
