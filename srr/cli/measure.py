"""``srr measure CHECKPOINT``: the layer-wise SRR table of a trained model (HU24 §5, E1–E4) and
its PNG plots, through :func:`srr.measurement.measure`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Checkpoint, DataDir, Dataset, Device, Download, ModelName, Pretrained, SPLIT_HELP
from .errors import USAGE, fit, stdout, user_errors

FORMATS = ("table", "csv", "json")


def default_out(checkpoint: Path) -> Path:
    """``<run>/measure`` for a run's checkpoint, else ``<stem>-measure`` beside the file."""
    if checkpoint.parent.name == "checkpoints" and (checkpoint.parent.parent / "config.json").is_file():
        return checkpoint.parent.parent / "measure"
    return checkpoint.with_name(f"{checkpoint.stem}-measure")


def measure_command(
    checkpoint: Checkpoint = None,
    model_name: ModelName = None,
    pretrained: Pretrained = None,
    split: Annotated[str, typer.Option(help=f"{SPLIT_HELP} (HU24 measure on training data).")] = "train",
    samples: Annotated[int, typer.Option(help="Images measured (the first ones of the split).")] = 512,
    eps: Annotated[float, typer.Option(help="ε of the coding rates (not ε²).")] = 0.1,
    lam: Annotated[float, typer.Option(help="λ of the sparsity term of μ_SRR.")] = 0.1,
    dataset: Dataset = None,
    data_dir: DataDir = None,
    download: Download = False,
    batch_size: Annotated[int, typer.Option(help="Batch size of the forward passes.")] = 256,
    device: Device = "auto",
    out: Annotated[Optional[Path], typer.Option(
        help="Folder for measure.png, .csv and .json. Default: <run>/measure.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="What to print: table, csv or json.")] = "table",
) -> None:
    """Per-layer R, R^c, ΔR, sparsity and μ_SRR of a trained model, with PNG plots."""
    from srr._checks import check_eps, check_lam
    from srr.measurement import measure

    from .checkpoints import check_data_options, check_out_folder, check_source, load_any, load_split

    with user_errors(USAGE):
        if fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        for name, value in (("samples", samples), ("batch-size", batch_size)):
            if value < 1:
                raise ValueError(f"--{name} must be a positive integer, got {value}")
        check_eps(eps, "--eps")
        check_out_folder(out)
        check_lam(lam, "--lam")
        check_source(checkpoint, model_name=model_name, pretrained=pretrained)
        dev = check_data_options(split=split, dataset=dataset, data_dir=data_dir, download=download, device=device)
    with user_errors():
        path, model, train_config = load_any(checkpoint, model_name=model_name, pretrained=pretrained, device=dev)
        data = load_split(model, train_config, split=split, dataset=dataset, data_dir=data_dir, download=download)
        table = measure(model, data, eps=eps, lam=lam, limit=samples, batch_size=batch_size, device=dev,
                        progress=fmt == "table")
        folder = out or default_out(path)
        folder.mkdir(parents=True, exist_ok=True)
        table.info.update(split=split, checkpoint=pretrained or str(path))
        table.to_csv(folder / "measure.csv")
        table.to_json(folder / "measure.json")
        plot = table.plot(folder / "measure.png")
    console = stdout()
    if fmt == "csv":
        typer.echo(table.to_csv(), nl=False)
    elif fmt == "json":
        typer.echo(table.to_json())
    else:
        console.print(fit(table.to_rich_table()))
        console.print(f"model μ_SRR (mean over layers of the output tokens): {table.srr:.4f}", highlight=False)
        console.print(f"wrote {plot}, {folder / 'measure.csv'}, {folder / 'measure.json'}", highlight=False)
