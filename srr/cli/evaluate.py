"""``srr eval CHECKPOINT``: accuracy and cross-entropy of a trained model on a split."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .errors import stdout, user_errors


def eval_command(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="A checkpoint (.pt) or a run folder (uses "
                                                                          "its checkpoints/latest.pt).")],
    split: Annotated[str, typer.Option(help="train, val (held out by srr train) or test.")] = "test",
    dataset: Annotated[Optional[str], typer.Option(
        help="Dataset. Default: the one the checkpoint was trained on.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder holding file-backed datasets.")] = None,
    download: Annotated[bool, typer.Option(
        "--download",
        help="Download the dataset if its files are missing.")] = False,
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 512,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Accuracy and loss of a trained model on a split."""
    from srr.train import evaluate
    from srr.train.distributed import resolve_device

    from .checkpoints import load_model, load_split, resolve_checkpoint

    with user_errors():
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        dev = resolve_device(device)
        path = resolve_checkpoint(checkpoint)
        model, train_config = load_model(path, dev)
        data = load_split(model, train_config, split=split, dataset=dataset, data_dir=data_dir, download=download)
        metrics = evaluate(model, data, device=dev, batch_size=batch_size)
    name = dataset or (train_config or {}).get("dataset")
    result = {"checkpoint": str(path), "dataset": name, "split": split, "n": metrics["n"],
              "accuracy": metrics["accuracy"], "loss": metrics["loss"]}
    console = stdout()
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table(title=f"srr eval: {path}", header_style="bold")
    for column in ("dataset", "split", "images", "accuracy", "loss"):
        table.add_column(column, justify="right" if column not in ("dataset", "split") else "left")
    table.add_row(str(name), split, str(metrics["n"]), f"{metrics['accuracy']:.2%}", f"{metrics['loss']:.4f}")
    console.print(table)
