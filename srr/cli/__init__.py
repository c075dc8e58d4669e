"""The ``srr`` command line (typer): ``train``, ``eval``, ``measure``, ``derive``, ``models``, ``bench``.

Each command is a thin layer over the library (``srr.train``, ``srr.measure``, ``srr.derive``,
``srr.models``); user errors print one red line and exit non-zero (srr/cli/errors.py).
``main()`` is the console script; ``python -m srr`` calls it too.
"""
from .app import app


def main() -> None:
    """Entry point of the ``srr`` console script."""
    app(prog_name="srr")


__all__ = ["app", "main"]
