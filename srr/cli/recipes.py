"""``srr recipes``: the named training recipes of ``srr train --recipe``, with their settings and sources."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from .errors import USAGE, fail, stdout


def recipes_command(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="Show one recipe in full.")] = None,
) -> None:
    """The recipes of ``srr train --recipe NAME``: what each sets and where its values come from."""
    from srr.train.recipes import RECIPES, recipe_settings

    if name is not None and name not in RECIPES:
        raise fail(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}", USAGE)
    console = stdout()
    table = Table(title="srr recipes (srr train --recipe NAME; explicit options override)", header_style="bold",
                  show_lines=True)
    table.add_column("recipe", max_width=34)
    table.add_column("settings")
    table.add_column("source")
    for recipe in RECIPES.values():
        if name is not None and recipe.name != name:
            continue
        settings = ", ".join(f"{k}={v}" for k, v in recipe_settings(recipe.name).items())
        table.add_row(f"[bold]{recipe.name}[/bold]\n{recipe.summary}", settings, recipe.source)
    console.print(table)
