"""Typed dataclasses as the one source of truth for settings: CLI flags, parsing, hashing.

``add_flags`` turns every field of a settings dataclass into a ``--flag`` (``ratio`` ->
``--ratio``, ``allocate_steps`` -> ``--allocate-steps``; a field's ``metadata["flag"]``
names its flag otherwise, ``metadata["aliases"]`` older spellings still read but not shown,
``metadata["metavar"]`` what the help shows for its value (default: from the type),
``metadata["shown"]`` words a default that is resolved later, ``metadata["help"]`` what it
means, for the help); ``given`` reads back the flags that were set, ``read_value`` one value
as its flag would; ``make`` builds the dataclass with one-line errors; ``name_flags`` puts
the flags in place of the field names in such an error; ``config_hash`` names a resolved
configuration.

A field whose ``metadata["stored"]`` names another spelling is written under that name by
``to_dict`` (so files and hashes keep it), read under either name by ``make``, and, on a
class marked with ``stored_names``, taken as a keyword and an attribute under it too.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import hashlib
import json
import re
import types
import typing
from typing import Any

from pacnet.errors import PacnetError

COMMAND_LINE_ONLY = (
    "quick", "cache", "db", "out", "threads", "device", "amp", "deterministic", "engine",
    "lease", "max_attempts", "retry_failed", "nproc_per_run", "debug",
)  # fmt: skip
"""Names that are command-line flags only, never keys of a settings table or config file."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def flag_of(cls: type, name: str) -> str:
    """The flag of field ``name`` of ``cls`` (``source_steps`` -> ``--source-steps``)."""
    found = {f.name: f for f in dataclasses.fields(cls)}[name]
    return _flag(found.metadata.get("flag", name))


def name_flags(message: str, flags: dict[str, str]) -> str:
    """``message`` with each name of ``flags`` that stands as a word replaced by its flag:
    ``source_steps must be >= 0`` -> ``--source-steps must be >= 0``."""
    for name, flag in flags.items():
        message = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", flag, message)
    return message


def unknown_hint(unknown: set[str], known: list[str]) -> str:
    """What to say about names that are not ``known``: a close match for a misspelling, the
    flag for a command-line flag (`` (did you mean 'noise'?)``); empty when nothing helps."""
    hints = []
    for name in sorted(unknown):
        if name in COMMAND_LINE_ONLY:
            hints.append(f"{name} is a command-line flag: use {_flag(name)}")
        elif close := difflib.get_close_matches(name, known, n=1):
            hints.append(f"did you mean {close[0]!r} for {name!r}?")
    return f" ({'; '.join(hints)})" if hints else ""


def _parser_for(tp: Any, name: str) -> tuple[Any, str]:
    """(string -> value converter, metavar) for a field type."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        inner, meta = _parser_for(args[0], name)

        def optional(s: str) -> Any:
            return None if s.lower() == "none" else inner(s)

        optional.__name__ = f"{getattr(inner, '__name__', 'value')} or none"
        return optional, meta + "|none"
    if origin is tuple:
        item = args[0]

        def items(s: str) -> tuple[Any, ...]:
            return tuple(item(v) for v in s.split(",") if v)

        items.__name__ = f"comma-separated {item.__name__}"
        return items, "A,B,..."
    if tp is bool:

        def parse_bool(s: str) -> bool:
            if s.lower() in ("1", "true", "yes", "on"):
                return True
            if s.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"{name}: expected true/false, got {s!r}")

        return parse_bool, "true|false"
    if tp in (int, float, str):
        return tp, tp.__name__.upper()
    raise TypeError(f"unsupported settings type for {name}: {tp}")


def add_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """Add one flag per field of ``cls``; unset flags stay absent from the namespace."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        convert, meta = _parser_for(hints[f.name], f.name)
        meta = f.metadata.get("metavar", meta)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        default = f.metadata.get("shown", default)  # a default resolved later, in words
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default)
        words = f.metadata.get("help")
        dest = f"{cls.__name__}.{f.name}"
        group.add_argument(
            flag_of(cls, f.name),
            dest=dest,
            type=convert,
            metavar=meta,
            default=argparse.SUPPRESS,
            help=f"{words} (default: {default})" if words else f"(default: {default})",
        )
        for old in f.metadata.get("aliases", ()):  # an older spelling, read but not shown
            group.add_argument(
                _flag(old),
                dest=dest,
                type=convert,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )


def given(namespace: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` whose flags (from :func:`add_flags`) were given, by name."""
    prefix = f"{cls.__name__}."
    return {k[len(prefix) :]: v for k, v in vars(namespace).items() if k.startswith(prefix)}


def read_value(cls: type, name: str, text: str, what: str) -> Any:
    """``text`` read as the type of field ``name`` of ``cls`` (as its flag reads it); a
    one-line error starting with ``what`` if it cannot be."""
    hint = typing.get_type_hints(cls)[name]
    convert, _ = _parser_for(hint, name)
    try:
        return convert(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise PacnetError(f"{what}: cannot read {text!r} as {hint}") from None


def stored_as(cls: type) -> dict[str, str]:
    """Field name -> the name ``to_dict`` writes it under, for the fields of ``cls`` with a
    ``metadata["stored"]`` spelling."""
    return {f.name: f.metadata["stored"] for f in dataclasses.fields(cls) if "stored" in f.metadata}


def _from_stored(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each stored spelling of a field of ``cls`` turned into the field's name."""
    stored = stored_as(cls)
    fields = {spelling: name for name, spelling in stored.items()}
    out = {}
    for key, value in values.items():
        name = fields.get(key, key)
        if name in out:
            raise PacnetError(
                f"{cls.__name__}: {name} and {stored[name]} name one setting; give one of them"
            )
        out[name] = value
    return out


def stored_names(cls: type) -> type:
    """Let the dataclass ``cls`` take each field's stored spelling (``metadata["stored"]``)
    as a keyword and read and set it as an attribute, as before the field was renamed."""
    renamed = stored_as(cls)
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            kwargs = _from_stored(cls, kwargs)
        except PacnetError as exc:
            raise TypeError(str(exc)) from None
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    for name, stored in renamed.items():
        setattr(
            cls,
            stored,
            property(
                lambda self, n=name: getattr(self, n),
                lambda self, value, n=name: setattr(self, n, value),
                doc=f"``{name}``, under the name it is stored as.",
            ),
        )
    return cls


def make(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` with a one-line error for unknown names (lists become tuples); a
    field's stored spelling (see :func:`to_dict`) counts as its name."""
    values = _from_stored(cls, values)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(values) - set(names)
    if unknown:
        raise PacnetError(
            f"unknown setting(s) for {cls.__name__}: {', '.join(sorted(unknown))}"
            f"{unknown_hint(unknown, names)}; known: {', '.join(names)}"
        )
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def to_dict(obj: Any) -> dict[str, Any]:
    """A settings dataclass as plain JSON-ready values (tuples become lists), each field
    under its stored spelling where it has one (``metadata["stored"]``)."""
    values = json.loads(json.dumps(dataclasses.asdict(obj)))
    stored = stored_as(type(obj))
    return {stored.get(k, k): v for k, v in values.items()}


def config_hash(config: Any, length: int = 16) -> str:
    """A stable short hash of a JSON-ready configuration."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]
