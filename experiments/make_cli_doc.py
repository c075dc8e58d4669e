"""Fill the generated blocks of ``docs/cli.md`` from the code, so that the page cannot drift from it.

Run: ``python -m experiments.make_cli_doc`` (``--check``: exit 1 if docs/cli.md is out of date).
A block is the text between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``; ``BLOCKS`` says
what each holds (the ``--resume`` rule of srr/train/resume.py; the variants of the model registry).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _resume() -> str:
    from srr.train.resume import resume_rule

    return f"On `--resume`, {resume_rule()}; a different value is refused in one line naming it (exit code 2)."


def _variants() -> str:
    from srr.models import VARIANTS

    return "\n".join(f"- `{name}`: {text}" for name, text in VARIANTS.items())


BLOCKS = {"resume": _resume, "variants": _variants}


def render(text: str) -> str:
    """``text`` with every generated block refilled."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n)(?:.*?\n)?(<!-- end: {name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"docs/cli.md has no generated block {name!r}")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md is out of date")
    args = parser.parse_args(argv)
    current = OUT.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{OUT} is out of date: run python -m experiments.make_cli_doc", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
