"""``srr models``: the model registry and the CRATE variants, as tables."""
from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from .errors import USAGE, fail, stdout, user_errors


def language_model_rows(pattern: str = "*") -> list[dict]:
    """One row per registered language model matching ``pattern`` (built on ``meta``, like :func:`model_rows`)."""
    import torch

    from srr.models import create_model, list_models

    rows = []
    for name in list_models(pattern, task="language"):
        with torch.device("meta"):
            model = create_model(name)
        c = model.config
        rows.append({"name": name, "dim": c.dim, "depth": c.depth, "heads": c.heads, "context": c.context,
                     "vocab_size": c.vocab_size, "variant": c.variant,
                     "params": sum(p.numel() for p in model.parameters())})
    return rows


def model_rows(pattern: str = "*") -> list[dict]:
    """One row per registered image model matching ``pattern``: its default config and parameter count.

    Models are built on the ``meta`` device, so no memory is allocated and no weights initialised.
    """
    import torch

    from srr.models import create_model, list_models

    rows = []
    for name in list_models(pattern):
        with torch.device("meta"):
            model = create_model(name)
        c = model.config
        rows.append({"name": name, "dim": c.dim, "depth": c.depth, "heads": c.heads, "head_dim": c.head_dim,
                     "image_size": c.image_size, "patch_size": c.patch_size, "in_chans": c.in_chans,
                     "num_classes": c.num_classes, "variant": c.variant,
                     "params": sum(p.numel() for p in model.parameters())})
    return rows


def models_command(
    pattern: Annotated[str, typer.Argument(metavar="PATTERN", help="Shell-style filter on model names, e.g. "
                                                                   "'crate_*'.")] = "*",
    variants: Annotated[bool, typer.Option("--variants/--no-variants", help="Also list the CRATE variants.")] = True,
) -> None:
    """The model registry as tables: image models (sizes at each model's default image size and classes), language
    models (at their default context and character vocabulary), and the CRATE variants."""
    from srr.models import VARIANTS

    with user_errors():
        rows, language = model_rows(pattern), language_model_rows(pattern)
    if not rows and not language:
        from srr.models import list_models

        raise fail(f"no registered model matches {pattern!r}; models: {', '.join(list_models(task=None))}", USAGE)
    console = stdout()
    if rows:
        table = Table(title="srr models", header_style="bold")
        for column in ("name", "d", "depth", "K", "p", "image", "patch", "classes", "params"):
            table.add_column(column, justify="left" if column == "name" else "right",
                             no_wrap=column in ("name", "image"))
        for r in rows:
            table.add_row(r["name"], str(r["dim"]), str(r["depth"]), str(r["heads"]), str(r["head_dim"]),
                          f"{r['image_size']}×{r['image_size']}×{r['in_chans']}", str(r["patch_size"]),
                          str(r["num_classes"]), f"{r['params'] / 1e6:.2f}M")
        console.print(table)
    if language:
        lt = Table(title="language models (srr train --dataset shakespeare-char|text|textfile)", header_style="bold")
        for column in ("name", "variant", "d", "depth", "K", "context", "vocab", "params"):
            lt.add_column(column, justify="left" if column in ("name", "variant") else "right", no_wrap=True)
        for r in language:
            lt.add_row(r["name"], r["variant"], str(r["dim"]), str(r["depth"]), str(r["heads"]), str(r["context"]),
                       str(r["vocab_size"]), f"{r['params'] / 1e6:.2f}M")
        console.print(lt)
    if variants and rows:
        vt = Table(title="variants (--variant)", header_style="bold")
        vt.add_column("variant", no_wrap=True)
        vt.add_column("compression output / description")
        for name, text in VARIANTS.items():
            vt.add_row(name, text)
        console.print(vt)
