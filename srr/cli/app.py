"""The typer application: one command per module of this package."""
from __future__ import annotations

import typer

from .bench import bench_command
from .derive import derive_command
from .evaluate import eval_command
from .measure import measure_command
from .models import models_command
from .train import train

app = typer.Typer(
    name="srr",
    help="Sparse rate reduction: train, evaluate and measure white-box CRATE transformers.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command("train")(train)
app.command("eval")(eval_command)
app.command("measure")(measure_command)
app.command("derive")(derive_command)
app.command("models")(models_command)
app.command("bench")(bench_command)
