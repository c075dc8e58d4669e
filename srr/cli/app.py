"""The typer application: one command per module of this package."""
from __future__ import annotations

import logging
from typing import Annotated

import typer

from .attention import attention_command
from .bench import bench_command
from .derive import derive_command
from .evaluate import eval_command
from .measure import measure_command
from .models import models_command
from .train import train

app = typer.Typer(
    name="srr",
    help="Sparse rate reduction: train, evaluate and measure white-box CRATE transformers.",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command("train")(train)
app.command("eval")(eval_command)
app.command("measure")(measure_command)
app.command("derive", context_settings={"ignore_unknown_options": True})(derive_command)  # "-R(...)" is an objective
app.command("models")(models_command)
app.command("bench")(bench_command)
app.command("attention")(attention_command)


class _NoteHandler(logging.Handler):
    """The library's notes (logger ``srr``: a new head, an interpolated position embedding) as one
    yellow line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        from rich.markup import escape

        from .errors import stderr

        stderr().print(f"[yellow]note:[/] {escape(record.getMessage())}")


def _version(value: bool) -> None:
    if value:
        import torch

        from srr import __version__

        typer.echo(f"srr {__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the srr and torch versions and exit.")] = False,
) -> None:
    """Sparse rate reduction: train, evaluate and measure white-box CRATE transformers."""
    logger = logging.getLogger("srr")
    if not any(isinstance(h, _NoteHandler) for h in logger.handlers):
        logger.addHandler(_NoteHandler(logging.INFO))
        logger.setLevel(logging.INFO)
