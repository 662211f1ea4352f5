"""One codec for the configuration dataclasses: dict/JSON and argparse, driven by field metadata.

A field declares its command-line form once, in its metadata (``opt(...)``); ``add_arguments`` builds the
flags, ``from_args`` reads them back over a base object (a flag left out keeps the base's value, so a
recipe's plan is only overridden where the user says so), and ``to_argv`` writes an object as flags that
parse back to an equal object. ``to_dict``/``from_dict`` are the JSON side. The plan, the search config and
the CLI all go through these four functions, so a new field is declared in one place.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, field, fields, replace
from typing import Any, Callable


def opt(default=MISSING, *, help: str, kind: str = "scalar", type: Callable | None = None, choices=None,
        parse: Callable[[str], Any] | None = None, render: Callable[[Any], str] | None = None, cli: bool = True,
        default_factory=MISSING):  # fmt: skip
    """A dataclass field with its command-line form.

    Args:
        kind: ``scalar`` (one value), ``list`` (``nargs="*"``), ``bool`` (``--x/--no-x``).
        type: the value's type (float, int, str); for lists, the element type.
        parse / render: text <-> value for fields whose flag is not a plain scalar (block sparsities).
        cli: False for fields that only live in JSON.
    """
    meta = {"help": help, "kind": kind, "type": type, "choices": choices, "parse": parse, "render": render, "cli": cli}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_fields(cls) -> list:
    return [f for f in fields(cls) if f.metadata.get("cli", False)]


def add_arguments(parser: argparse.ArgumentParser, cls, defaults, *, skip=()) -> None:
    """Add one flag per CLI field of ``cls``. ``defaults`` (an instance) only feeds the help text: flags
    default to None so that ``from_args`` can tell "not given" from "given"."""
    for f in cli_fields(cls):
        if f.name in skip:
            continue
        m = f.metadata
        shown = getattr(defaults, f.name)
        help_text = f"{m['help']} (default: {m['render'](shown) if m['render'] and shown is not None else shown})"
        if m["kind"] == "bool":
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif m["kind"] == "list":
            parser.add_argument(flag(f.name), nargs="*", type=m["type"] or str, default=None, help=help_text)
        else:
            parser.add_argument(flag(f.name), type=m["parse"] or m["type"] or str, choices=m["choices"], default=None,
                                help=help_text)  # fmt: skip


def from_args(cls, args: argparse.Namespace, base, *, skip=()):
    """``base`` with every flag the user gave applied (a new object; ``base`` is not changed)."""
    changes = {}
    for f in cli_fields(cls):
        if f.name in skip:
            continue
        value = getattr(args, f.name, None)
        if value is not None:
            changes[f.name] = list(value) if f.metadata["kind"] == "list" else value
    return replace(base, **changes)


def to_argv(obj, *, skip=()) -> list[str]:
    """Flags that ``from_args(type(obj), parse(flags), type(obj)())`` turns back into ``obj``."""
    argv: list[str] = []
    for f in cli_fields(type(obj)):
        if f.name in skip:
            continue
        value, m = getattr(obj, f.name), f.metadata
        if value is None:
            continue
        if m["kind"] == "bool":
            argv.append(flag(f.name) if value else "--no-" + f.name.replace("_", "-"))
        elif m["kind"] == "list":
            argv += [flag(f.name), *[repr(v) if isinstance(v, float) else str(v) for v in value]]
        else:
            text = m["render"](value) if m["render"] else repr(value) if isinstance(value, float) else str(value)
            argv += [flag(f.name), text]
    return argv


def to_dict(obj) -> dict:
    return asdict(obj)


def from_dict(cls, data: dict):
    """Build ``cls`` from a dict, refusing unknown keys (a typo must not be silently ignored)."""
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = f.metadata.get("nested")  # a dataclass field holding another config (the search's plan)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        kwargs[f.name] = value
    return cls(**kwargs)


def to_json(obj) -> str:
    return json.dumps(to_dict(obj), indent=2, sort_keys=True)


__all__ = ["opt", "add_arguments", "from_args", "to_argv", "to_dict", "from_dict", "to_json", "cli_fields", "flag"]
