"""Typer options generated from a config dataclass: one option per field, nothing typed twice.

The field's type annotation gives the option's type, its default the option's default, its trailing
``# comment`` in the source the help text, and the ``# section`` line above a group of fields the
``--help`` panel. :class:`Option` adjusts a field where the command line differs from the Python value
(another name, a path, a help text computed from a registry, a CLI value mapped to the field's).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import re
import tokenize
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape


_FIELD_DEFAULT = object()  # Option.default not given: the field's


@dataclasses.dataclass(frozen=True)
class Option:
    """How one field differs on the command line. ``help`` may be a callable (evaluated when the options
    are built, e.g. a registry's names); ``to_field`` maps the parsed value onto the field's."""

    names: tuple[str, ...] = ()  # the option's names; () keeps --field-name
    type: Any = None  # the CLI type (e.g. Path for a str field); None: the field's
    default: Any = _FIELD_DEFAULT  # the CLI default where it is not the field's
    help: str | Callable[[], str] | None = None  # None: the field's comment
    to_field: Callable[[Any], Any] | None = None  # CLI value → field value


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> tuple[dict[str, str], dict[str, str]]:
    """``(help, panel)`` per field of the dataclass ``cls`` (and its dataclass bases), read from the source:
    a field line's trailing comment, and the last comment-only line above it (``# data`` → panel "Data")."""
    help_texts, panels = {}, {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass) and "__dataclass_fields__" in vars(klass):
            own_help, own_panels = _own_comments(klass)
            help_texts.update(own_help)
            panels.update(own_panels)
    return help_texts, panels


def _own_comments(cls: type) -> tuple[dict[str, str], dict[str, str]]:
    source = inspect.getsource(cls)
    lines = source.splitlines()
    help_texts, panels, section, line_fields = {}, {}, None, {}
    names = set(getattr(cls, "__annotations__", {}))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        row, col = token.start
        if token.type == tokenize.NAME and token.string in names and row not in line_fields:
            if re.match(rf"\s*{token.string}\s*:", lines[row - 1]):
                line_fields[row] = token.string
                if section is not None:
                    panels[token.string] = section
        elif token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if row in line_fields:
                help_texts[line_fields[row]] = text
            elif not lines[row - 1][:col].strip():  # a comment-only line: a section
                section = re.sub(r"\s*\(.*\)\s*$", "", text)
                section = section[:1].upper() + section[1:]
    return help_texts, panels


def help_from_comment(comment: str) -> str:
    """A field comment as ``--help`` text: ``None: the model's own`` reads ``Default: the model's own.``"""
    text = re.sub(r"^None: ", "Default: ", comment.strip())
    text = re.sub(r";\s*None: ", "; default: ", text)
    return text if not text or text.endswith((".", ")")) else text + "."


def _cli_type(annotation) -> tuple[Any, bool]:
    """``(type for typer, optional)`` of a field annotation (``int | None`` → ``(int, True)``)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
        raise TypeError(f"cannot make an option of the annotation {annotation!r}: one type or None, please")
    return annotation, False


def config_parameters(cls: type, options: dict[str, Option]) -> list[inspect.Parameter]:
    """One keyword parameter per field of ``cls``, annotated with its typer option (field order)."""
    hints = typing.get_type_hints(cls)
    help_texts, panels = field_comments(cls)
    parameters = []
    for field in dataclasses.fields(cls):
        spec = options.get(field.name, Option())
        kind, optional = _cli_type(hints[field.name])
        if spec.type is not None:
            kind = spec.type
        default = field.default if spec.default is _FIELD_DEFAULT else spec.default
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        if default is None:
            optional = True
        flag = "--" + field.name.replace("_", "-")
        names = spec.names or (flag,)
        if kind is bool and default is True and not spec.names:  # a default-on switch can be turned off
            names = (f"{flag}/--no-{flag[2:]}",)
        text = spec.help() if callable(spec.help) else spec.help
        if text is None:
            text = help_from_comment(help_texts.get(field.name, ""))
        option = typer.Option(*names, help=escape(text), rich_help_panel=panels.get(field.name))
        annotation = Annotated[Optional[kind] if optional else kind, option]
        parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotation))
    return parameters


def config_values(cls: type, options: dict[str, Option], values: dict[str, Any]) -> dict[str, Any]:
    """The field values of the parsed ``values`` of :func:`config_parameters` (paths as strings)."""
    fields = {}
    for field in dataclasses.fields(cls):
        value = values[field.name]
        spec = options.get(field.name, Option())
        if spec.to_field is not None:
            value = spec.to_field(value)
        elif isinstance(value, Path):
            value = str(value)
        fields[field.name] = value
    return fields


def with_config_options(cls: type, options: dict[str, Option] | None = None):
    """Decorate ``command(ctx, parsed: dict, **own_options)``: typer sees the command's own parameters and one
    option per field of ``cls`` (a new field is an option at once); the command gets the parsed values of
    those as ``parsed`` (turn them into field values with :func:`config_values`, inside its error boundary)."""
    options = options or {}

    def decorate(command):
        own = inspect.signature(command, eval_str=True)
        first, *rest = [p for p in own.parameters.values() if p.name != "parsed"]
        generated = config_parameters(cls, options)
        taken = {p.name for p in [first, *rest]} & {p.name for p in generated}
        if taken:
            raise TypeError(f"options {sorted(taken)} are both {command.__name__}'s own and {cls.__name__} fields")
        own_names = {p.name for p in rest}

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            if first.name in kwargs:
                args = (kwargs.pop(first.name), *args)
            parsed = {k: v for k, v in kwargs.items() if k not in own_names}
            return command(*args, parsed=parsed, **{k: v for k, v in kwargs.items() if k in own_names})

        parameters = [first.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD),
                      *generated, *[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in rest]]
        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # typer reads the signature above, not the command's own
        return wrapper

    return decorate
