"""Where a request's shard key comes from: pure functions from request parts to a key.

Design rules:
- No sockets: each function takes bytes already read and returns the key text
  or raises ``ProxyError`` (``missing_shard_key`` / ``invalid_shard_key``).
- A key is text. Bytes must be UTF-8 (header values too) or the key is invalid:
  two spellings of one key must never reach two ordinals.
- JSON numbers keep every digit: ``{"id": 123456789012345678901234567890}`` has
  the key ``"123456789012345678901234567890"``; floats, booleans, null, objects
  and arrays are not keys.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from mypy_extensions import mypyc_attr

from sidecar.annotations import KeySource
from sidecar.errors import ProxyError


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


def from_header(value: bytes | None, source: KeySource) -> str:
    """The header value, stripped of optional whitespace (RFC 9110 field values)."""
    if value is None:
        raise _missing(source)
    raw = value
    if raw and (_ows(raw[0]) or _ows(raw[-1])):  # rare: strip() costs a method call
        raw = raw.strip(b" \t")
    if raw:  # the common case inline (one call less per request); _text raises the errors
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return _text(raw, source)


def from_query(query: bytes, source: KeySource) -> str:
    """The first ``name=value`` of the query string, percent-decoded (``+`` is a space)."""
    wanted = source.name.encode("utf-8")
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if unquote_to_bytes(name.replace(b"+", b" ")) == wanted:
            return _text(unquote_to_bytes(value.replace(b"+", b" ")), source)
    raise _missing(source)


def from_path(path: bytes, source: KeySource) -> str:
    """Segment ``index`` of the path after the route (``/a/b`` has segments a, b)."""
    segments = path.split(b"/")[1:]
    if source.index >= len(segments) or not segments[source.index]:
        raise _missing(source)
    return _text(unquote_to_bytes(segments[source.index]), source)


def from_json(body: bytes, source: KeySource) -> str:
    """The field at ``source.path`` of a JSON object body."""
    if not body.strip():
        raise ProxyError("missing_shard_key", f"no shard key in {source}: the body is empty",
                         source=str(source))
    try:
        document = json.loads(body, parse_int=JsonInteger)
    except (UnicodeDecodeError, ValueError) as err:
        raise ProxyError("invalid_shard_key", f"the body is not JSON, so {source} has no key: "
                         f"{err}", source=str(source)) from None
    value = _walk(document, source)
    if isinstance(value, JsonInteger):
        return str.__str__(value)
    if isinstance(value, str) and not isinstance(value, JsonInteger):
        if not value:
            raise ProxyError("missing_shard_key", f"shard key from {source} is empty",
                             source=str(source))
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
        elif isinstance(node, list) and segment.isdigit() and int(segment) < len(node):
            node = node[int(segment)]
        else:
            raise _missing(source)
    return node
