"""``srr eval CHECKPOINT``: accuracy and cross-entropy of a trained model on a split."""
from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from .options import Checkpoint, DataDir, Dataset, Device, Download, ModelName, Pretrained, SPLIT_HELP
from .errors import USAGE, fit, stdout, user_errors


def eval_command(
    checkpoint: Checkpoint = None,
    model_name: ModelName = None,
    pretrained: Pretrained = None,
    split: Annotated[str, typer.Option(help=f"{SPLIT_HELP}.")] = "test",
    dataset: Dataset = None,
    data_dir: DataDir = None,
    download: Download = False,
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 512,
    device: Device = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Accuracy and loss of a trained model on a split."""
    from srr.train import evaluate

    from .checkpoints import check_data_options, check_source, load_any, load_split

    with user_errors(USAGE):
        if batch_size < 1:
            raise ValueError(f"--batch-size must be a positive integer, got {batch_size}")
        check_source(checkpoint, model_name=model_name, pretrained=pretrained)
        dev = check_data_options(split=split, dataset=dataset, data_dir=data_dir, download=download, device=device)
    with user_errors():
        path, model, train_config = load_any(checkpoint, model_name=model_name, pretrained=pretrained, device=dev)
        data = load_split(model, train_config, split=split, dataset=dataset, data_dir=data_dir, download=download)
        metrics = evaluate(model, data, device=dev, batch_size=batch_size)
    name = dataset or (train_config or {}).get("dataset")
    result = {"checkpoint": pretrained or str(path), "dataset": name, "split": split, "n": metrics["n"],
              "accuracy": metrics["accuracy"], "loss": metrics["loss"]}
    console = stdout()
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table(title=f"srr eval: {result['checkpoint']}", header_style="bold")
    for column in ("dataset", "split", "images", "accuracy", "loss"):
        table.add_column(column, justify="right" if column not in ("dataset", "split") else "left")
    table.add_row(str(name), split, str(metrics["n"]), f"{metrics['accuracy']:.2%}", f"{metrics['loss']:.4f}")
    console.print(fit(table))
