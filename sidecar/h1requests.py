"""The request side of an HTTP/1.1 client connection: httptools' callbacks, which
turn the byte stream into queued exchanges (heads, bodies, keep-alive).

Design rules:
- Each request becomes an ``Exchange`` in a queue answered strictly in order
  (pipelining); only the head of the queue is started. A deep queue pauses
  reading.
- Request heads are bounded (request line, header bytes); framing (Content-Length,
  Transfer-Encoding), Expect, the HTTP version and the hop-by-hop headers are read
  here, before anything of the request goes upstream. The keep-alive decision is
  llhttp's; an upgrade request is answered and the connection closed.
- Trailer fields of a chunked request are read and dropped: never forwarded,
  never taken for header fields, never routed on (RFC 9110 §6.5.1).
- A ``ProxyError`` raised in a callback ends the stream: the connection
  (``proxy.ClientConnection``) answers it once and closes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import httptools

from sidecar import http11
from sidecar.errors import ProxyError
from sidecar.exchange import Exchange
from sidecar.h1base import BLOCK_PIPELINE, ClientBase, Context

#: Pipelined requests queued behind a slow one before reading from the client pauses.
PIPELINE_LIMIT: Final = 64


class RequestReader(ClientBase):
    """A client connection's request parsing and queue of exchanges."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.parser = parser = httptools.HttpRequestParser(self)
        # Bound once: compiled (mypyc), a method call on a C object from uvloop or
        # httptools costs a type lookup every time; a bound method does not.
        self.parse: Callable[[bytes], None] = parser.feed_data
        self.get_method: Callable[[], bytes] = parser.get_method
        self.should_keep_alive: Callable[[], bool] = parser.should_keep_alive
        self.should_upgrade: Callable[[], bool] = parser.should_upgrade
        #: A list, not a deque: it rarely holds more than one, and compiled, a list's
        #: append, [0] and pop(0) are native calls where a deque's are method lookups.
        self.queue: list[Exchange] = []
        self.parsing: Exchange | None = None
        #: Inside exchange_done's loop that starts queued exchanges (no recursion).
        self.dispatching = False
        #: Bytes received while a head is incomplete (caps what httptools buffers).
        self.head_bytes = 0
        #: Bytes of the current request's header lines.
        self.header_bytes = 0
        self.in_head = False
        #: Size of the read being parsed (bounds the current head, see on_headers_complete).
        self.chunk_bytes = 0
        #: Sweeps since the current head began (h1timeouts.close_idle).
        self.head_sweeps = 0
        #: A chunk-size line was parsed and no chunk data followed yet: the reads
        #: until then are a chunk extension or the trailer section.
        self.chunk_head = False
        self.trailer_bytes = 0

    # --- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        exchange = Exchange(self)
        self.parsing = exchange
        self.queue.append(exchange)
        if len(self.queue) > PIPELINE_LIMIT:
            self.block(BLOCK_PIPELINE)
        self.in_head = True
        self.head_bytes = self.header_bytes = self.head_sweeps = 0

    def on_url(self, url: bytes) -> None:
        exchange = self.parsing
        assert exchange is not None
        # len(), here and below: compiled, the truth of bytes or a frozenset is a generic
        # call (PyObject_IsTrue), their length a field read.
        exchange.url = exchange.url + url if len(exchange.url) else url  # rarely in pieces
        if len(exchange.url) > self.ctx.max_request_line:
            raise ProxyError("uri_too_long",
                             f"request target is over {self.ctx.max_request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.parsing
        assert exchange is not None
        if exchange.headers_done:
            return  # a trailer field: dropped (the module's docstring says why)
        special = http11.request_special(name)
        if not len(special):  # forwarded as sent: four appends cost less than one tuple +=
            head = exchange.head
            head.append(name)
            head.append(b": ")
            head.append(value)
            head.append(b"\r\n")
            return
        self.header_bytes += len(name) + len(value)
        if special == b"content-length":
            exchange.content_length = value
        elif special == b"transfer-encoding":
            # Every line counts (llhttp frames by the last): checked whole at the head's end.
            te = exchange.transfer_encoding
            exchange.transfer_encoding = value if te is None else te + b", " + value
            exchange.chunked = exchange.hop_headers = True
        elif special == b"expect":
            if value.strip().lower() == b"100-continue":
                exchange.expect_continue = True
            else:
                exchange.expect_other = value
        elif special in http11.REQUEST_SPECIAL:
            if special == b"connection":
                exchange.drop = exchange.drop | http11.connection_tokens(value)
            exchange.hop_headers = True
        # else Proxy-*: for this hop only, dropped

    def on_headers_complete(self) -> None:
        exchange = self.parsing
        assert exchange is not None
        self.in_head = False
        # Counted at most 4/3 of the bytes they took on the wire ("a:b\r\n" counts as
        # "a: b\r\n"), and the head came in this read and the earlier ones since
        # message begin: when twice that fits, the exact count cannot be over.
        limit = self.ctx.max_header_bytes
        if 2 * (self.head_bytes + self.chunk_bytes) > limit and \
                self.header_bytes + sum(map(len, exchange.head)) > limit:
            raise ProxyError("headers_too_large", f"request headers are over {limit} bytes")
        parser = self.parser
        exchange.method = self.get_method()
        exchange.keep_alive = keep_alive = self.should_keep_alive()
        # llhttp keeps an HTTP/1.0 request alive only for a Connection: keep-alive
        # (a hop-by-hop header): otherwise a kept-alive request is HTTP/1.1, and the
        # version string (formatted on each call) is not needed.
        # llhttp accepts 0.9, 1.0, 1.1 and 2.0, and keeps 0.9 and 2.0 alive only as it
        # does 1.0: so the versions this proxy cannot speak are all caught here.
        if not keep_alive or exchange.hop_headers:
            version = parser.get_http_version()
            exchange.http10 = version == "1.0"
            if version != "1.0" and version != "1.1":
                raise ProxyError("http_version_not_supported", f"HTTP/{version} in the request "
                                 "line: only HTTP/1.0 and HTTP/1.1 are served")
        if exchange.transfer_encoding is not None:
            # Before anything is sent: llhttp refuses some of these only after this callback.
            error = http11.check_transfer_encoding(exchange.transfer_encoding, exchange.http10)
            if error is not None:
                raise error
        exchange.headers_done = True
        # llhttp upgrades on an Upgrade header (a hop-by-hop one) or a CONNECT: only then
        # is it asked, a call into the parser saved on every other request.
        if (exchange.hop_headers or exchange.method == b"CONNECT") and self.should_upgrade():
            exchange.keep_alive = False  # no tunnels: answer this one request, then close
        if self.queue and self.queue[0] is exchange and not self.dispatching:
            exchange.start()

    def on_chunk_header(self) -> None:
        self.chunk_head = True
        self.trailer_bytes = 0

    def on_chunk_complete(self) -> None:
        self.chunk_head = False

    def on_body(self, body: bytes) -> None:
        self.chunk_head = False
        exchange = self.parsing
        if exchange is not None:
            exchange.body(body)

    def on_message_complete(self) -> None:
        exchange, self.parsing = self.parsing, None
        if exchange is not None:
            exchange.complete()

