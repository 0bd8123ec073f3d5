"""HTTP/2 header lists as the sidecar forwards them: pure functions, no connection state.

Design rules:
- Connection-specific fields (RFC 9113 §8.2.2) never cross the proxy; ``te`` only
  as ``trailers`` (gRPC needs it). A client's own ``x-shard-ordinal`` or
  ``x-shard-count`` is dropped: the backend reads the sidecar's, never a forged one.
- ``grpc-timeout`` is parsed as the gRPC wire spec says (at most 8 digits and a
  unit); a malformed one is ignored, as gRPC servers do.
"""

from __future__ import annotations

from typing import Final

Headers = list[tuple[bytes, bytes]]

#: Connection-specific fields (RFC 9113 §8.2.2) and the sidecar's own request fields.
_DROP_REQUEST: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
    b"x-shard-ordinal", b"x-shard-count", b"http2-settings",
})
_DROP_RESPONSE: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
})

#: grpc-timeout units, in seconds.
_UNITS: Final = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of ``name`` (lower case), or None."""
    for n, value in headers:
        if n == name:
            return value
    return None


def upstream_request(headers: Headers, path: bytes, ordinal: int, count: int) -> Headers:
    """The request headers for the backend: ``:path`` rewritten (the route stripped when
    it was the first segment), connection-specific fields dropped, and the sidecar's
    ``x-shard-ordinal`` / ``x-shard-count`` added (as on HTTP/1.1)."""
    out: Headers = []
    for name, value in headers:
        if name == b":path":
            out.append((name, path))
        elif name in _DROP_REQUEST or (name == b"te" and value.strip().lower() != b"trailers"):
            continue
        else:
            out.append((name, value))
    out.append((b"x-shard-ordinal", b"%d" % ordinal))
    out.append((b"x-shard-count", b"%d" % count))
    return out


def downstream_response(headers: Headers, ordinal: int | None) -> Headers:
    """A backend's response head for the client, with the sidecar's ``x-shard-ordinal``."""
    out = [(n, v) for n, v in headers if n not in _DROP_RESPONSE and n != b"x-shard-ordinal"]
    if ordinal is not None and header(headers, b":status") is not None:
        out.append((b"x-shard-ordinal", b"%d" % ordinal))
    return out


def downstream_trailers(headers: Headers) -> Headers:
    return [(n, v) for n, v in headers if n not in _DROP_RESPONSE]


def grpc_timeout(value: bytes | None) -> float | None:
    """``grpc-timeout`` (e.g. ``100m``, ``5S``) in seconds, or None when absent or malformed."""
    if value is None or not 2 <= len(value) <= 9:
        return None
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or unit not in _UNITS:
        return None
    return int(digits) * _UNITS[unit]
