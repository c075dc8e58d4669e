"""The typer application: one command per module of this package."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from types import SimpleNamespace
from typing import Annotated

import typer
import typer.core
from typer.core import TyperGroup

from .attention import attention_command
from .bench import bench_command
from .derive import derive_command
from .errors import FAILED, USAGE, fail
from .evaluate import eval_command
from .measure import measure_command
from .models import models_command
from .recipes import recipes_command
from .sample import sample_command
from .train import train


def _click_exceptions() -> SimpleNamespace:
    """The exception classes of the click that typer runs on, looked up one by one: recent typer vendors its
    own click (``typer._click``) and moves some classes (``Abort`` lives in ``typer.exceptions`` there); a
    class found nowhere is ``()``, which an ``except`` clause never matches."""
    import typer.exceptions

    modules = [getattr(getattr(typer.core, "_click", None), "exceptions", None), typer.exceptions]
    try:
        import click.exceptions

        modules.append(click.exceptions)
    except ImportError:
        pass

    def find(name):
        found = tuple(dict.fromkeys(getattr(m, name) for m in modules if m is not None and hasattr(m, name)))
        return found or ()

    return SimpleNamespace(**{name: find(name) for name in ("NoArgsIsHelpError", "UsageError", "ClickException",
                                                            "Abort")})


def _quiet_broken_pipe() -> int:
    """stdout was closed early (``srr --help | head -5``): nothing more can be said there, and nothing needs
    saying elsewhere; later writes (the interpreter's own flush at exit) go to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())
    return FAILED


class _OneLineUsageErrors(TyperGroup):
    """click's usage errors (an unparsable value, an unknown option, a missing argument) as one red line
    naming the command's --help, exit code 2, like every other bad value (srr/cli/errors.py)."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        exceptions = _click_exceptions()
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except exceptions.NoArgsIsHelpError:  # plain `srr`: the help, as click shows it
            return super().main(*args, **kwargs)
        except exceptions.UsageError as error:
            hint = f" (see: {error.ctx.command_path} --help)" if error.ctx is not None else ""
            raise SystemExit(fail(f"{error.format_message()}{hint}", USAGE).exit_code) from None
        except exceptions.ClickException as error:
            raise SystemExit(fail(error.format_message(), error.exit_code).exit_code) from None
        except exceptions.Abort:
            raise SystemExit(fail("aborted", FAILED).exit_code) from None
        except BrokenPipeError:
            raise SystemExit(_quiet_broken_pipe()) from None
        raise SystemExit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineUsageErrors,
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
app.command("recipes")(recipes_command)
app.command("bench")(bench_command)
app.command("attention")(attention_command)
app.command("sample")(sample_command)


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
