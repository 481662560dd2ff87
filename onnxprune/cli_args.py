"""Click options derived from ``PruneOptions``' fields (the way Polygraphy's argument groups
build a tool's flags): one click option per field, and back from the parsed values to options.

The CLI adds only what is its own (output paths, reports, --config, --quiet, --debug).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from .errors import BadInputError
from .options import SECTIONS, Flag, PruneOptions, default_of, option_fields

_TYPES = {"float": float, "int": int, "text": None, "path": click.Path(path_type=Path),
          "file": click.Path(dir_okay=False, path_type=Path)}


def alias_param(flag: Flag) -> str:
    """The click parameter name of a field's second flag (``--no-reconstruct``: no_reconstruct)."""
    return flag.alias[0][2:].replace("-", "_")


def _click_kwargs(name: str, flag: Flag) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"help": flag.help, "show_default": flag.show_default}
    choices = flag.choices()
    if flag.kind == "flag":
        kwargs["is_flag"] = True
    elif choices is not None:
        kwargs["type"] = click.Choice(choices, case_sensitive=flag.case_sensitive)
    elif _TYPES[flag.kind] is not None:
        kwargs["type"] = _TYPES[flag.kind]
    if flag.metavar:
        kwargs["metavar"] = flag.metavar
    if flag.multiple:
        kwargs["multiple"] = True
    else:
        default = flag.cli_default if flag.cli_default is not None else default_of(name)
        kwargs["default"] = None if isinstance(default, (dict, list)) else default
    return kwargs


def field_option(name: str) -> Callable:
    """The click option (and its alias, if any) of one ``PruneOptions`` field."""
    flag = dict(option_fields())[name]
    decorators = [click.option(flag.flag, name, **_click_kwargs(name, flag))]
    if flag.alias:
        decorators.append(click.option(flag.alias[0], alias_param(flag), is_flag=True, help=flag.alias[2]))

    def apply(f: Callable) -> Callable:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return apply


def prune_options(f: Callable) -> Callable:
    """Every ``PruneOptions`` field as a click option, in field order."""
    for name, _ in reversed(list(option_fields())):
        f = field_option(name)(f)
    return f


def cli_names() -> list[str]:
    """The click parameter names ``prune_options`` adds (fields, then aliases)."""
    names = [name for name, _ in option_fields()]
    return names + [alias_param(flag) for _, flag in option_fields() if flag.alias]


def options_from_cli(values: dict[str, Any]) -> PruneOptions:
    """The parsed flags as ``PruneOptions`` (not yet validated): unset flags keep the defaults."""
    given: dict[str, Any] = {}
    for name, flag in option_fields():
        value = values.get(name)
        if flag.alias and values.get(alias_param(flag)):
            if value is not None:
                raise BadInputError(f"{flag.flag} and {flag.alias[0]} contradict each other")
            value = flag.alias[1]
        if value is not None and value != ():
            given[name] = value
    return PruneOptions(**given)


def help_sections(own: dict[str, tuple[str, ...]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``--help`` headings with their parameter names: each heading's fields in field order, placed
    where ``own`` (the command's own options by heading) has "*"; without an entry, fields only."""
    by_group: dict[str, list[str]] = {title: [] for title in SECTIONS}
    for name, flag in option_fields():
        by_group[flag.group] += [name] + ([alias_param(flag)] if flag.alias else [])
    sections = []
    for title in SECTIONS:
        names: list[str] = []
        for item in own.get(title, ("*",)):
            names += by_group[title] if item == "*" else [item]
        sections.append((title, tuple(names)))
    return tuple(sections)
