"""Where a request's shard key comes from: pure functions from request parts to a key.

Design rules:
- No sockets: each function takes bytes already read and returns the key text
  or raises ``ProxyError`` (``missing_shard_key`` / ``invalid_shard_key`` /
  ``ambiguous_shard_key``).
- One key per request: a backend must never read a key other than the one
  routed on. Two different values (two header lines, a comma list, a repeated
  query parameter, a repeated JSON member on the key's path) or a path that a
  backend would normalise (dot segments) are ``ambiguous_shard_key``. An
  identical repeat is tolerated.
- A key is text. Bytes must be UTF-8 (header values too) or the key is invalid:
  two spellings of one key must never reach two ordinals.
- JSON numbers keep every digit: ``{"id": 123456789012345678901234567890}`` has
  the key ``"123456789012345678901234567890"``; floats, booleans, null, objects
  and arrays are not keys.
"""

from __future__ import annotations

import json
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from mypy_extensions import mypyc_attr

from sidecar.annotations import KeySource
from sidecar.errors import ProxyError, quote

#: Deepest nesting of arrays and objects in a body read for a ``json:`` key.
MAX_JSON_DEPTH: Final = 64


@mypyc_attr(native_class=False)  # a str subclass stays a Python class
class JsonInteger(str):
    """A JSON integer literal, kept as its decimal text so no precision is lost."""


def _ows(byte: int) -> bool:
    """Optional whitespace (RFC 9110): space or tab."""
    return byte == 0x20 or byte == 0x09


def _text(raw: bytes, source: KeySource) -> str:
    try:
        key = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProxyError("invalid_shard_key", f"shard key from {source} is not valid UTF-8",
                         source=str(source)) from None
    if not key:
        raise ProxyError("missing_shard_key", f"shard key from {source} is empty",
                         source=str(source))
    return key


def _missing(source: KeySource) -> ProxyError:
    return ProxyError("missing_shard_key", f"no shard key in {source}", source=str(source))


def ambiguous(source: KeySource, first: bytes | str | None, other: bytes | str) -> ProxyError:
    """Two different keys in one request."""
    return ProxyError("ambiguous_shard_key",
                      f"{source} has two different values, '{quote(first or '')}' and "
                      f"'{quote(other)}': send one key", source=str(source))


def from_header(value: bytes | None, source: KeySource) -> str:
    """The header value, stripped of optional whitespace (RFC 9110 field values)."""
    if value is None:
        raise _missing(source)
    raw = value
    if len(raw) and (_ows(raw[0]) or _ows(raw[-1])):  # rare: strip() costs a method call
        raw = raw.strip(b" \t")
    if 0x2C in raw:  # an int operand: a byte search, no bytes object made
        # A list: two header lines joined by an intermediary read as one (RFC 9110 §5.3).
        first, _, other = raw.partition(b",")
        raise ambiguous(source, first.strip(b" \t"), other.strip(b" \t"))
    if len(raw):  # the common case inline (one call less per request); _text raises the errors
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return _text(raw, source)


def from_query(query: bytes, source: KeySource) -> str:
    """The ``name=value`` of the query string, percent-decoded (``+`` is a space)."""
    wanted = source.name.encode("utf-8")
    found: bytes | None = None
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if unquote_to_bytes(name.replace(b"+", b" ")) == wanted:
            decoded = unquote_to_bytes(value.replace(b"+", b" "))
            if found is None:
                found = decoded
            elif decoded != found:
                raise ambiguous(source, found, decoded)
    if found is None:
        raise _missing(source)
    return _text(found, source)


_DOT_SEGMENTS: Final = frozenset({b".", b".."})


def from_path(path: bytes, source: KeySource) -> str:
    """Segment ``index`` of the path after the route (``/a/b`` has segments a, b)."""
    segments = path.split(b"/")[1:]
    if 0x2E in path or 0x25 in path:  # "." or "%": a backend may remove dot segments
        for segment in segments:
            if unquote_to_bytes(segment) in _DOT_SEGMENTS:
                raise ProxyError(
                    "ambiguous_shard_key",
                    f"path '{quote(path)}' has a dot segment: a backend that removes it sees "
                    f"another segment at {source}", source=str(source))
    if source.index >= len(segments) or not segments[source.index]:
        raise _missing(source)
    return _text(unquote_to_bytes(segments[source.index]), source)


class _Ambiguous:
    """Stands for an object member given twice with different values."""

    def __init__(self, first: Any, other: Any) -> None:
        self.first, self.other = first, other


def _members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object hook: a member repeated with another value is _Ambiguous
    (json.loads alone keeps the last, other parsers the first)."""
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            seen = members[name]
            if isinstance(seen, _Ambiguous) or seen != value or type(seen) is not type(value):
                value = seen if isinstance(seen, _Ambiguous) else _Ambiguous(seen, value)
        members[name] = value
    return members


def too_deep(body: bytes, limit: int) -> bool:
    """Whether arrays and objects nest deeper than ``limit`` (strings skipped)."""
    if body.count(b"[") + body.count(b"{") <= limit:  # C-speed for the usual body
        return False
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte == 0x5B or byte == 0x7B:  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte == 0x5D or byte == 0x7D:  # ] }
            depth -= 1
    return False


def from_json(body: bytes, source: KeySource) -> str:
    """The field at ``source.path`` of a JSON object body."""
    if not body.strip():
        raise ProxyError("missing_shard_key", f"no shard key in {source}: the body is empty",
                         source=str(source))
    # json.loads recurses once per level: past Python's limit it raises RecursionError.
    if too_deep(body, MAX_JSON_DEPTH):
        raise ProxyError("invalid_shard_key", f"the body nests arrays and objects deeper than "
                         f"{MAX_JSON_DEPTH} levels, the limit for reading {source}",
                         source=str(source), limit=MAX_JSON_DEPTH)
    try:
        document = json.loads(body, parse_int=JsonInteger, object_pairs_hook=_members)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise ProxyError("invalid_shard_key", f"the body is not JSON, so {source} has no key: "
                         f"{quote(str(err))}", source=str(source)) from None
    value = _walk(document, source)
    if isinstance(value, JsonInteger):
        return str.__str__(value)
    if isinstance(value, str) and not isinstance(value, JsonInteger):
        if not value:
            raise ProxyError("missing_shard_key", f"shard key from {source} is empty",
                             source=str(source))
        try:
            value.encode("utf-8")  # the key is hashed as UTF-8
        except UnicodeEncodeError:
            raise ProxyError("invalid_shard_key", f"shard key at {source} has a lone surrogate "
                             f"(\\u escape), so it is not valid UTF-8", source=str(source)
                             ) from None
        return value
    kind = "null" if value is None else type(value).__name__
    kind = {"dict": "object", "list": "array", "float": "a non-integer number"}.get(kind, kind)
    raise ProxyError("invalid_shard_key", f"shard key at {source} is {kind}: expected a string "
                     "or an integer", source=str(source))


def _walk(document: Any, source: KeySource) -> Any:
    """Follow the dotted path; a decimal segment also indexes an array."""
    node = document
    for segment in source.path:
        if isinstance(node, dict) and segment in node:
            node = node[segment]
        elif isinstance(node, list) and segment.isascii() and segment.isdigit() and \
                int(segment) < len(node):
            node = node[int(segment)]
        else:
            raise _missing(source)
        if isinstance(node, _Ambiguous):
            raise ProxyError("ambiguous_shard_key",
                             f"the body has member '{quote(segment)}' twice with different "
                             f"values on the path of {source}", source=str(source))
    return node
