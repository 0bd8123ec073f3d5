"""HTTP/1.1 wire details shared by both sides of the proxy: pure byte helpers.

Design rules:
- Names are compared lower-cased; values are never decoded here.
- Hop-by-hop headers (RFC 9110 §7.6.1) never cross the proxy: Connection,
  Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade and any header
  the Connection header names. Framing (Content-Length / chunked) is re-made
  by the proxy for each side.
- Everything here returns ready-to-write bytes and caches what repeats.
"""

from __future__ import annotations

from typing import Final

#: Request headers the proxy consumes or re-makes instead of forwarding.
REQUEST_SPECIAL: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization",
    b"proxy-authenticate", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"expect", b"content-length",
    # The sidecar sets these; a client must not be able to forge them.
    b"x-shard-ordinal", b"x-shard-count",
})
#: Response headers the proxy consumes or re-makes instead of forwarding.
RESPONSE_SPECIAL: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"content-length", b"x-shard-ordinal",
})
#: Connection-header tokens that are not header names.
_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive"})
_SIMPLE_CONNECTION: Final = frozenset({b"close", b"keep-alive", b"Keep-Alive", b"Close"})
NO_TOKENS: Final[frozenset[bytes]] = frozenset()

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"
CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
CLOSE: Final = b"Connection: close\r\n"
KEEP_ALIVE: Final = b"Connection: keep-alive\r\n"
NO_BODY_STATUS: Final = frozenset({204, 304})

SHARD_HEADERS: dict[tuple[int, int], bytes] = {}


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names listed in a Connection header (``close``/``keep-alive`` are options)."""
    if value in _SIMPLE_CONNECTION:
        return NO_TOKENS
    tokens = {t.strip().lower() for t in value.split(b",")}
    return frozenset(t for t in tokens if t and t not in _CONNECTION_OPTIONS)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def shard_headers(ordinal: int, count: int) -> bytes:
    """``X-Shard-Ordinal`` and ``X-Shard-Count`` for the upstream request (cached)."""
    block = SHARD_HEADERS.get((ordinal, count))
    if block is None:
        block = b"X-Shard-Ordinal: %d\r\nX-Shard-Count: %d\r\n" % (ordinal, count)
        if len(SHARD_HEADERS) < 65536:
            SHARD_HEADERS[(ordinal, count)] = block
    return block


def split_target(url: bytes) -> tuple[bytes, bytes, bytes, bytes] | None:
    """``/<route>/<rest>?<q>`` -> (route, upstream target, rest path, query), or None.

    An absolute-form target (``http://host/route/...``) is accepted as RFC 9112
    asks of servers; its authority is dropped.
    """
    if url[:1] != b"/":
        if url[:7].lower() != b"http://":
            return None
        slash = url.find(b"/", 7)
        url = url[slash:] if slash >= 0 else b"/"
    mark = url.find(b"?")
    if mark < 0:
        second = url.find(b"/", 1)
        if second < 0:
            return url[1:], b"/", b"/", b""
        rest = url[second:]
        return url[1:second], rest, rest, b""
    path, query = url[:mark], url[mark + 1:]
    second = path.find(b"/", 1)
    if second < 0:
        route, rest = path[1:], b"/"
    else:
        route, rest = path[1:second], path[second:]
    return route, rest + b"?" + query, rest, query
