"""A settings dataclass as command-line flags and ``SHARDMESH_<FIELD>`` environment variables.

Used by the webhook's and the directory's settings (the directory already
builds on the webhook package, never the other way round). Rules:
- One flag per field (``extra_sans`` is the repeatable ``--extra-san``), its
  help the ``#:`` comment above the field, plus the default.
- A flag wins over the environment variable, which wins over the default;
  parsing applies no defaults, so the environment can fill the gaps.
- Values are converted by the field's annotation (``int``, ``float``,
  ``bool``, else text); a bad one is a ValueError naming the flag and the value.
  Then the dataclass's own ``validate()`` runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol, TypeVar

ENV_PREFIX = "SHARDMESH_"


class Validating(Protocol):
    def validate(self) -> Any: ...


S = TypeVar("S", bound=Validating)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comments above each field (the Sphinx convention), for ``--help``.
    A comment covers the fields that follow it up to the next comment."""
    docs: dict[str, str] = {}
    pending: list[str] = []
    last_was_field = False
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source installed (bytecode only)
        return docs
    for line in source.splitlines():
        text = line.strip()
        if text.startswith("#:"):
            if last_was_field:
                pending = []
            pending.append(text[2:].strip())
            last_was_field = False
        elif (m := re.match(r"(\w+): ", text)) and pending:
            docs[m[1]] = " ".join(pending)
            last_was_field = True
    return docs


def parser(cls: type, prog: str, description: str, env_example: str,
           skip: Collection[str] = ()) -> argparse.ArgumentParser:
    """One flag per field of ``cls`` but ``skip``, every default None (see the rules)."""
    ap = argparse.ArgumentParser(
        prog=prog, description=description,
        epilog=f"Every flag can also be set as {ENV_PREFIX}<FLAG> in the environment "
               f"(e.g. {env_example}); the flag wins.")
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = f"{docs.get(f.name, '')} (default: {default!r})".replace("%", "%%").strip()
        if f.type == "bool":
            ap.add_argument(flag(f.name), action="store_const", const="true", default=None,
                            help=help_)
        elif f.name == "extra_sans":
            ap.add_argument(flag("extra_san"), dest="extra_sans", action="append", default=None,
                            help=f"{docs.get(f.name, '')} Repeatable.")
        else:
            ap.add_argument(flag(f.name), default=None, help=help_)
    return ap


def load(cls: type[S], ap: argparse.ArgumentParser, argv: Sequence[str],
         environ: Mapping[str, str], strip: bool = False) -> S:
    """Flags (parsed by ``ap``), then ``SHARDMESH_<FIELD>``, then the defaults; validated.
    ``strip``: text values lose surrounding whitespace."""
    args = vars(ap.parse_args(list(argv)))
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        raw = args.get(f.name)
        if raw is None:
            raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = convert(f.name, f.type, raw, strip)
    settings: S = cls(**values).validate()
    return settings


def convert(name: str, type_: object, raw: object, strip: bool = False) -> object:
    """One raw value (a flag's text, a list for ``--extra-san``, an env value) as the field's."""
    if name == "extra_sans":
        items = raw if isinstance(raw, list) else str(raw).split(",")
        return tuple(s.strip() for s in items if s.strip())
    text = str(raw).strip() if strip else str(raw)
    try:
        if type_ == "int":
            return int(text)
        if type_ == "float":
            return float(text)
    except ValueError:
        raise ValueError(f"invalid value '{text}' for {flag(name)}: expected a number") from None
    if type_ == "bool":
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"invalid value '{text}' for {flag(name)}: expected true or false")
        return text.lower() in ("true", "1")
    return text
