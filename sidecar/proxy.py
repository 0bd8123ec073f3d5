"""The data plane's server side: one ``ClientConnection`` per client socket.

Design rules:
- httptools parses the requests; each becomes an ``Exchange`` (sidecar.exchange)
  in a queue answered strictly in order (pipelining). Only the head of the
  queue talks to a backend; a deep queue pauses reading.
- Backpressure both ways: a full upstream write buffer pauses reading from the
  client, a full client write buffer pauses reading from the backend.
- Responses are collected in ``out`` and written once per event (``flush``),
  so a small response costs one write system call.
- Request heads are bounded (request line, header bytes, and time from their
  first byte); a malformed stream is answered once with an error and closed.
- Trailer fields of a chunked request are read and dropped: never forwarded,
  never taken for header fields, never routed on (RFC 9110 §6.5.1). Their bytes
  are bounded like a head's.
- Nothing of a request that will be refused reaches a backend: framing, Host and
  the key are checked before its head is written upstream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final, cast

import httptools

from sidecar import http11
from sidecar.errors import ProxyError, render
from sidecar.exchange import BLOCK_PIPELINE, Exchange
from sidecar.metrics import Stats
from sidecar.settings import Settings
from sidecar.shardmap import ShardMap
from sidecar.upstream import Pools, not_connected

#: Pipelined requests queued behind a slow one before reading from the client pauses.
_PIPELINE_LIMIT: Final = 64


class Context:
    """What every connection shares: settings, the map, the pools, the stats."""

    def __init__(self, settings: Settings, shard_map: ShardMap, pools: Pools,
                 stats: Stats) -> None:
        self.settings, self.map, self.pools, self.stats = settings, shard_map, pools, stats
        # Read on every request: native fields here, where Settings (not compiled) would
        # cost an attribute lookup each.
        self.max_request_line = settings.max_request_line
        self.max_header_bytes = settings.max_header_bytes
        self.head_timeout = settings.client_head_seconds
        self.connections: set[ClientConnection] = set()
        self.draining = False

    def close_idle(self, sweeps: int, head_sweeps: int) -> None:
        """Close the connections that waited ``sweeps`` sweeps for their client: idle
        between requests, or stuck inside a request head (a slow or dead client).
        A connection with a request past its head waits on the backend instead.

        Answer 408 and close a connection whose request head has been arriving for
        ``head_sweeps`` sweeps (a head trickled in, which no gap ever times out), or
        that sent bytes in as many sweeps in a row without beginning a request (empty
        lines, which llhttp skips). Not while reading is paused: that wait is ours.
        """
        for conn in list(self.connections):
            if not conn.blocked and (conn.in_head or (conn.idle_sweeps == 0 and
                                                      conn.parsing is None and not conn.queue)):
                conn.head_sweeps += 1
                if conn.head_sweeps >= head_sweeps:
                    conn.protocol_error(ProxyError(
                        "request_timeout",
                        f"the request head did not arrive within {self.head_timeout:g}s"))
                    continue
            if conn.waiting_for_client():
                conn.idle_sweeps += 1
                if conn.idle_sweeps >= sweeps:
                    conn.close_after_flush()

    def expire(self, now: float) -> None:
        """Answer 504 for every exchange whose backend is past its deadline.

        A sweep over the connections, not a registry of exchanges in flight: only
        the head of a connection's queue waits on a backend, and the sweep (every
        50 ms) costs less than adding and removing every request.
        """
        late = [c.queue[0] for c in self.connections
                if c.queue and 0.0 < c.queue[0].deadline <= now]
        for exchange in late:
            exchange.deadline = 0.0
            exchange.on_timeout()
            exchange.conn.flush()


class ClientConnection(asyncio.Protocol):
    """One client socket: parses requests, queues exchanges, writes responses in order."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = parser = httptools.HttpRequestParser(self)
        # Bound once: compiled (mypyc), a method call on a C object from uvloop or
        # httptools costs a type lookup every time; a bound method does not.
        self.feed: Callable[[bytes], None] = parser.feed_data
        self.get_method: Callable[[], bytes] = parser.get_method
        self.should_keep_alive: Callable[[], bool] = parser.should_keep_alive
        self.should_upgrade: Callable[[], bool] = parser.should_upgrade
        #: The request clock (latency, deadlines): not loop.time(), which uvloop
        #: keeps in whole milliseconds.
        self.now: Callable[[], float] = time.monotonic
        self.send: Callable[[bytes], None] = not_connected
        #: A list, not a deque: it rarely holds more than one, and compiled, a list's
        #: append, [0] and pop(0) are native calls where a deque's are method lookups.
        self.queue: list[Exchange] = []
        self.parsing: Exchange | None = None
        self.out: list[bytes] = []
        self.blocked = 0
        self.write_paused = False
        #: Inside exchange_done's loop that starts queued exchanges (no recursion).
        self.dispatching = False
        self.closing = False
        #: Nothing more is parsed (after a protocol error or an upgrade request).
        self.ignore_input = False
        #: Bytes received while a head is incomplete (caps what httptools buffers).
        self.head_bytes = 0
        #: Bytes of the current request's header lines.
        self.header_bytes = 0
        self.in_head = False
        #: Size of the read being parsed (bounds the current head, see on_headers_complete).
        self.chunk_bytes = 0
        #: Idle sweeps (Context.close_idle) since the client last sent bytes.
        self.idle_sweeps = 0
        #: Sweeps since the current head began (Context.close_idle).
        self.head_sweeps = 0
        #: A chunk-size line was parsed and no chunk data followed yet: the reads
        #: until then are a chunk extension or the trailer section.
        self.chunk_head = False
        self.trailer_bytes = 0
        #: After a protocol error behind earlier requests: written once they are answered.
        self.final_error: bytes | None = None

    # --- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        transport.set_write_buffer_limits(high=256 * 1024)
        self.send = transport.write
        self.ctx.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.ignore_input:
            return
        self.chunk_bytes = len(data)
        self.idle_sweeps = 0
        trailing = self.chunk_head
        try:
            self.feed(data)
        except httptools.HttpParserUpgrade:
            # No tunnels: the request is served as plain HTTP/1.1 and the connection
            # closes after it (on_headers_complete cleared keep_alive).
            self.ignore_input = True
        except httptools.HttpParserCallbackError as err:
            cause = err.__context__
            if isinstance(cause, ProxyError):
                self.protocol_error(cause)
            else:
                raise
        except httptools.HttpParserError as err:
            self.protocol_error(ProxyError("bad_request", f"malformed HTTP request: {err}"))
        if self.in_head:
            self.head_bytes += len(data)
            ctx = self.ctx
            if self.head_bytes > ctx.max_header_bytes + ctx.max_request_line:
                self.protocol_error(ProxyError(
                    "headers_too_large", f"request head is over {ctx.max_header_bytes} bytes"))
        elif trailing and self.chunk_head:  # a whole read inside the trailer section
            self.trailer_bytes += len(data)
            if self.trailer_bytes > self.ctx.max_header_bytes:
                self.protocol_error(ProxyError(
                    "headers_too_large",
                    f"request trailer section is over {self.ctx.max_header_bytes} bytes"))
        if self.out:  # usually empty: responses are written from the backend's side
            self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.ctx.connections.discard(self)
        for exchange in self.queue:
            exchange.abort()
        if self.parsing is not None:
            self.parsing.abort()
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._upstream_reading(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._upstream_reading(True)

    def _upstream_reading(self, on: bool) -> None:
        """Backpressure: only the head exchange has a backend sending to this client."""
        if self.queue:
            upstream = self.queue[0].upstream
            if upstream is not None:
                upstream.set_reading(on)

    # --- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        exchange = Exchange(self)
        self.parsing = exchange
        self.queue.append(exchange)
        if len(self.queue) > _PIPELINE_LIMIT:
            self.block(BLOCK_PIPELINE)
        self.in_head = True
        self.head_bytes = self.header_bytes = self.head_sweeps = 0

    def on_url(self, url: bytes) -> None:
        exchange = self.parsing
        assert exchange is not None
        exchange.url = exchange.url + url if exchange.url else url  # rarely in pieces
        if len(exchange.url) > self.ctx.max_request_line:
            raise ProxyError("uri_too_long",
                             f"request target is over {self.ctx.max_request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.parsing
        assert exchange is not None
        if exchange.headers_done:
            return  # a trailer field: dropped (the module's docstring says why)
        special = http11.request_special(name)
        if not special:  # forwarded as sent: four appends cost less than one tuple +=
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
        if not keep_alive or exchange.hop_headers:
            exchange.http10 = parser.get_http_version() == "1.0"
        if exchange.transfer_encoding is not None:
            # Before anything is sent: llhttp refuses some of these only after this callback.
            error = http11.check_transfer_encoding(exchange.transfer_encoding, exchange.http10)
            if error is not None:
                raise error
        exchange.headers_done = True
        if self.should_upgrade():
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

    def waiting_for_client(self) -> bool:
        queue = self.queue
        return not queue or (len(queue) == 1 and queue[0] is self.parsing and self.in_head)

    # --- used by exchanges --------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> None:
        out = self.out
        if self.closing:
            out.clear()
            return
        if out and self.transport is not None:
            self.send(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def block(self, reason: int) -> None:
        if not self.blocked and self.transport is not None:
            self.transport.pause_reading()
        self.blocked |= reason

    def unblock(self, reason: int) -> None:
        if self.blocked & reason:
            self.blocked &= ~reason
            if not self.blocked and self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def exchange_done(self, exchange: Exchange) -> None:
        queue = self.queue
        if queue and queue[0] is exchange:
            queue.pop(0)
        if exchange.close_after:
            self.close_after_flush()
            return
        if self.final_error is not None and not queue:
            self.write(self.final_error)
            self.close_after_flush()
            return
        if self.blocked & BLOCK_PIPELINE and len(queue) <= _PIPELINE_LIMIT // 2:
            self.unblock(BLOCK_PIPELINE)
        if self.dispatching:
            return  # the loop below (further up the stack) starts the next one
        self.dispatching = True
        try:
            # A loop, not recursion: queued requests that fail at once finish inside start().
            while queue and queue[0].headers_done and not queue[0].began:
                queue[0].start()
        finally:
            self.dispatching = False
        if not queue and self.ctx.draining:
            self.close_after_flush()

    def close_after_flush(self) -> None:
        if not self.closing:
            self.flush()
        self.closing = self.ignore_input = True
        for exchange in self.queue:
            exchange.abort()
        self.queue.clear()
        if self.transport is not None:
            self.transport.close()

    def protocol_error(self, error: ProxyError) -> None:
        """The byte stream is unusable: answer once (after earlier responses), then close."""
        for exchange in list(self.queue):
            if not exchange.headers_done or exchange is self.parsing:
                self.queue.remove(exchange)
                exchange.abort()  # e.g. a bad chunk mid-upload: the backend must not keep it
        error_response = render(error, close=True)
        self.parsing = None
        self.in_head = self.chunk_head = False
        if not self.queue:
            self.write(error_response)
            self.close_after_flush()
        else:
            # Earlier exchanges are answered first; exchange_done then writes this.
            self.final_error = error_response
            self.ignore_input = True

    def abort(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.abort()

    def drain(self) -> None:
        """Graceful shutdown: close now if idle, else after the current response."""
        if not self.queue and self.parsing is None:
            self.close_after_flush()



__all__ = ["ClientConnection", "Context"]
