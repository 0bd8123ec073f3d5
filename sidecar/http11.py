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

from http import HTTPStatus
from typing import Final

from sidecar.errors import ProxyError, quote

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


def _status_line(code: int) -> bytes:
    try:
        reason = HTTPStatus(code).phrase.encode("latin-1")
    except ValueError:
        reason = b""  # RFC 9112: the reason phrase may be empty
    return b"HTTP/1.1 %d %b\r\n" % (code, reason)


#: Status code -> the client's status line, with the standard reason phrase. The
#: backend's own phrase is not relayed (as nginx and Envoy do): clients must ignore
#: it (RFC 9112 §4), and not asking httptools for it saves a callback per response.
STATUS_LINES: Final = tuple(_status_line(code) for code in range(1000))


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names listed in a Connection header (``close``/``keep-alive`` are options)."""
    if value in _SIMPLE_CONNECTION:
        return NO_TOKENS
    tokens = {t.strip().lower() for t in value.split(b",")}
    return frozenset(t for t in tokens if t and t not in _CONNECTION_OPTIONS)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def title_case(name: bytes) -> bytes:
    """``x-shard-key`` -> ``X-Shard-Key``, the spelling most clients send."""
    return b"-".join(part[:1].upper() + part[1:].lower() for part in name.split(b"-"))


#: Header names this long or longer are never special (the longest is 19).
_MAX_NAME: Final = 64


def _slot(name: bytes) -> int:
    """Where a name's length and first letter (lower-cased) meet in ``SpecialNames.slots``."""
    return len(name) << 7 | ((name[0] | 0x20) & 0x7F)


class SpecialNames:
    """Tells whether a header name is one of a fixed set, without lower-casing or
    hashing most names: on the request path that cost more than the rest of a
    header's handling (bench/sidecar.py).

    ``slots[_slot(name)]`` is 0 when no name of the set has that length and first
    letter, which ends the check for most headers. Otherwise it is 1 + the index in
    ``spellings`` of the usual spellings (lower-case and Title-Case) of those names,
    compared as they are; only an unusual spelling is lower-cased.
    """

    def __init__(self, names: frozenset[bytes]) -> None:
        assert all(0 < len(n) < _MAX_NAME and n == n.lower() for n in names)
        self.names = names
        groups: dict[int, list[tuple[bytes, bytes]]] = {}
        for lname in sorted(names):
            for spelling in (lname, title_case(lname)):
                groups.setdefault(_slot(spelling), []).append((spelling, lname))
        slots = bytearray(_MAX_NAME << 7)
        for index, slot in enumerate(groups):
            slots[slot] = index + 1
        self.slots = bytes(slots)
        self.spellings = tuple(tuple(group) for group in groups.values())

    def find(self, name: bytes) -> bytes:
        """``name`` lower-cased if it is in the set, else b""."""
        n = len(name)
        if n == 0 or n >= _MAX_NAME:
            return b""
        index = self.slots[n << 7 | ((name[0] | 0x20) & 0x7F)]  # _slot(name), inline
        if index == 0:
            return b""
        for spelling, lname in self.spellings[index - 1]:
            if name == spelling:
                return lname
        lname = name.lower()
        return lname if lname in self.names else b""


_REQUEST_NAMES: Final = SpecialNames(REQUEST_SPECIAL)
_RESPONSE_NAMES: Final = SpecialNames(RESPONSE_SPECIAL)
_P: Final = 0x70  # "p", as in Proxy-*


def request_special(name: bytes) -> bytes:
    """The lower-cased name of a request header the proxy consumes (``REQUEST_SPECIAL``)
    or drops (``Proxy-*``); b"" for every other header, which is forwarded as sent."""
    lname = _REQUEST_NAMES.find(name)
    if len(lname):  # compiled, cheaper than the truth of bytes (a generic call)
        return lname
    if len(name) >= 6 and (name[0] | 0x20) == _P and name[:6].lower() == b"proxy-":
        return name.lower()
    return b""


def response_special(name: bytes) -> bytes:
    """The lower-cased name of a response header the proxy consumes
    (``RESPONSE_SPECIAL``); b"" for every other header."""
    return _RESPONSE_NAMES.find(name)


def scan_head(head: list[bytes], lname: bytes, usual: bytes,
              ) -> tuple[int, bytes, bytes | None, bytes | None]:
    """One pass over a head built as ``[first line, name, b": ", value, CRLF, ...]``:
    (how many Host fields, the last Host value, the first value of header ``lname``
    (lower-cased; ``usual``, its usual spelling, is compared first), a later value of
    it that differs from the first once stripped of OWS, else None). ``lname`` b""
    looks for no header."""
    hosts = 0
    host = b""
    first: bytes | None = None
    other: bytes | None = None
    n = len(lname)
    for i in range(1, len(head) - 3, 4):
        name = head[i]
        size = len(name)
        if size == n and (name == usual or name.lower() == lname):
            value = head[i + 2]
            if first is None:
                first = value
            elif other is None and value.strip(b" \t") != first.strip(b" \t"):
                other = value
        if size == 4 and (name == b"Host" or name.lower() == b"host"):
            hosts += 1
            host = head[i + 2]
    return hosts, host, first, other


def check_host(hosts: int, host: bytes, http10: bool) -> ProxyError | None:
    """RFC 9112 §3.2: exactly one Host field line (HTTP/1.0 may have none), one value."""
    if hosts == 1 and 0x2C not in host:  # the common case: one Host, no list
        return None
    if hosts == 0:
        if http10:
            return None
        return ProxyError("bad_request", "an HTTP/1.1 request must have a Host header")
    if hosts > 1:
        return ProxyError("bad_request", f"the request has {hosts} Host headers: one is allowed")
    return ProxyError("bad_request", f"Host '{quote(host)}' is a list: one host is allowed")


def check_transfer_encoding(value: bytes, http10: bool) -> ProxyError | None:
    """RFC 9112 §6.1 and §6.3 for a request's Transfer-Encoding (all its field lines,
    comma-joined): only ``chunked`` alone is forwarded. Chunked not final (or
    repeated), or any Transfer-Encoding in HTTP/1.0, leaves the body length unknown:
    400, and the connection closes. A coding before the final chunked is valid
    framing that no backend is known to decode: 501, as nginx answers."""
    codings = [c.strip(b" \t").lower() for c in value.split(b",")]
    if http10:
        return ProxyError("bad_request", f"Transfer-Encoding '{quote(value)}' in an HTTP/1.0 "
                          "request: its body length is unknown")
    if codings == [b"chunked"]:
        return None
    if codings[-1] != b"chunked" or b"chunked" in codings[:-1]:
        return ProxyError("bad_request", f"Transfer-Encoding '{quote(value)}' does not end "
                          "with one chunked: the body length is unknown")
    return ProxyError("unsupported_transfer_encoding", f"Transfer-Encoding '{quote(value)}': "
                      "only chunked is supported")


def split_target(url: bytes) -> tuple[bytes, bytes, bytes, bytes] | None:
    """``/<route>/<rest>?<q>`` -> (route, upstream target, rest path, query), or None.

    An absolute-form target (``http://host/route/...``) is accepted as RFC 9112
    asks of servers; its authority is dropped.
    """
    if not url.startswith(b"/"):
        if url[:7].lower() != b"http://":
            return None
        slash = url.find(b"/", 7)
        url = url[slash:] if slash >= 0 else b"/"
    # The route name is short: scan it byte by byte (compiled, a native loop) rather
    # than call bytes.find, whose argument parsing costs more than the scan.
    n = len(url)
    end = 1
    while end < n and url[end] != 0x2F and url[end] != 0x3F:  # "/" and "?"
        end += 1
    route = url[1:end]
    # An int operand: ``b"?" in url`` would first try the bytes as an int and fail.
    mark = n if 0x3F not in url else url.find(b"?", end)
    if mark == n:
        rest = url[end:] if end < n else b"/"
        return route, rest, rest, b""
    query = url[mark + 1:]
    if mark == end:
        return route, b"/?" + query, b"/", query
    return route, url[end:], url[end:mark], query
