"""The CLI's error boundary: errors a user can act on become one red line and an exit code,
never a traceback: 2 for a bad value (a ValueError inside ``user_errors(USAGE)``, click's usage errors),
1 for files that are missing or unusable (data, checkpoints) and runs that fail. Unexpected exceptions
(bugs) still show theirs; ``SRR_DEBUG=1`` shows every traceback."""
from __future__ import annotations

import contextlib
import os
import re

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

USAGE = 2  # a bad option value or name (click's convention)
FAILED = 1  # the command could not do its work (missing files, unreadable checkpoint, diverged run)
INTERRUPTED = 130  # stopped by a signal after saving


def stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


def stdout() -> Console:
    """Standard output; when piped (not a terminal) wide enough that no table is squeezed."""
    console = Console(soft_wrap=False)
    return console if console.is_terminal else Console(soft_wrap=False, width=max(console.width, 160))


_NUMBER = re.compile(r"^[\s+\-−]*[\d.,]+(e[+\-]?\d+)?\s*(%|s|[kKMG]|images/s)?(\s*\(.*\))?$|^(nan|inf|-inf|—|-)$")


def fit(table: Table) -> Table:
    """Numbers are never cut: a column of numbers keeps its widest cell whole; text columns fold instead
    of ending in an ellipsis."""
    for column in table.columns:
        cells = [str(c) for c in column._cells]
        if cells and all(_NUMBER.match(c.strip()) for c in cells if c.strip()):
            column.min_width = max(len(str(column.header)), *(len(c) for c in cells))
            column.no_wrap = True
        else:
            column.overflow = "fold"
    return table


def fail(message: str, code: int = FAILED) -> typer.Exit:
    """Print ``message`` as one red line on stderr; return the ``typer.Exit`` to raise."""
    text = " ".join(str(message).split())  # one line, whatever the message held
    stderr().print(f"[bold red]error:[/] {escape(text)}")
    return typer.Exit(code=code)


@contextlib.contextmanager
def user_errors(code: int = FAILED):
    """Turn the library's user-facing exceptions raised inside the block into :func:`fail`."""
    from srr.models.checkpoints import CheckpointError
    from srr.models.pretrained import MissingPackageError
    from srr.train.errors import NonFiniteLossError, TrainingInterrupted

    if os.environ.get("SRR_DEBUG"):
        yield
        return
    try:
        yield
    except TrainingInterrupted as error:
        stderr().print(f"[bold yellow]interrupted:[/] {escape(str(error))}")
        raise typer.Exit(code=INTERRUPTED) from None
    except (NonFiniteLossError, MissingPackageError) as error:
        raise fail(str(error), FAILED) from None
    except (CheckpointError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        raise fail(str(error), FAILED) from None  # the files are missing or unusable: the values were fine
    except ValueError as error:
        raise fail(str(error), code) from None
    except OSError as error:
        raise fail(f"{type(error).__name__}: {error}", FAILED) from None


@contextlib.contextmanager
def named_options(config_class=None):
    """A ValueError raised in the block that starts a clause with a ``TrainConfig`` field name (``batch_size
    must be ...``) names the option the user typed instead (``--batch-size must be ...``)."""
    from srr.train.config import TrainConfig, option_name

    fields = sorted((config_class or TrainConfig).field_names(), key=len, reverse=True)
    pattern = re.compile(rf"(?<![\w\-.=])({'|'.join(fields)})(?= must\b| \()")
    try:
        yield
    except ValueError as error:
        message = pattern.sub(lambda m: option_name(m.group(1)), str(error))
        if message == str(error):
            raise
        raise ValueError(message) from None
