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
    images: Annotated[int, typer.Option(help="How many images (the first ones of the split), one row each.")] = 4,
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
        count = min(images, len(data))
        batch = torch.stack([data[i][0] for i in range(count)]).to(dev)  # (B, C, H, W)
        index = layer % depth
        target = out or _default_out(Path(path), index)
        written = plot_attention(model, batch, target, layer=index)
    stdout().print(f"wrote {written}", highlight=False)


def _default_out(path: Path, layer: int) -> Path:
    name = f"attention_layer{layer}.png"
    if path.is_dir():  # a save_pretrained folder (a run folder arrives as its checkpoints/latest.pt)
        return path / name
    if path.parent.name == "checkpoints":
        return path.parent.parent / "plots" / name
    return path.with_name(f"{path.stem}-{name}")
