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
- Timeouts cost the request path no timer: sweeps over the connections
  (``Context.expire`` every 50 ms for the backend side, ``Context.close_idle``
  for the client side) read per-connection deadlines, flags and counters.
- Connections are capped (``--max-connections``, with file descriptors kept in
  reserve for the backends): one over the cap gets a 503 and a close.
- Memory is capped too: a connection holding a full buffer (its client does not
  read, its backend does not read the upload, a body waits for a connection or
  a ``json:`` key) counts against ``--buffer-budget``; over it, the one that has
  held its buffer longest is cut.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

import httptools

from sidecar import http11
from sidecar.errors import ProxyError, render
from sidecar.exchange import BLOCK_PENDING, BLOCK_PIPELINE, BLOCK_UPSTREAM, Exchange
from sidecar.metrics import Stats
from sidecar.settings import Settings
from sidecar.shardmap import ShardMap
from sidecar.upstream import Pools, not_connected

if TYPE_CHECKING:
    from sidecar.h2front import H2Shared

#: The HTTP/2 connection preface (RFC 9113 §3.4), as h2c clients with prior knowledge
#: (gRPC) open a connection.
_H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: Pipelined requests queued behind a slow one before reading from the client pauses.
_PIPELINE_LIMIT: Final = 64
#: File descriptors kept free of client connections: listeners, the event loop, probes,
#: the Kubernetes client, idle pooled connections beyond one per client.
FD_RESERVE: Final = 80
#: Refused connections lingering for their 503 to be read; beyond, refusals are resets.
_REJECTED_LIMIT: Final = 256
#: Any bytes the socket did not take at once pause the other side's reading until they
#: are written: a small response never waits, and a connection holds at most one read
#: (uvloop reads up to 256 KiB at a time) that it counts against the buffer budget.
WRITE_HIGH: Final = 0
#: What a connection holding a full buffer adds to RSS, as measured with 300 clients not
#: reading a large body: one read from the other side and the allocator's overhead.
BUFFER_WEIGHT: Final = 448 * 1024
_FULL: Final = BLOCK_PENDING | BLOCK_UPSTREAM

log = logging.getLogger("shardmesh.sidecar.proxy")
# What a connection waits on its client for (ClientConnection.client_wait).
WAIT_NONE: Final = 0
WAIT_IDLE: Final = 1
WAIT_BODY: Final = 2


def effective_max_connections(configured: int, nofile: int) -> int:
    """The connection cap: ``configured``, lowered so that every client connection can
    also hold a backend connection with ``FD_RESERVE`` descriptors to spare."""
    return max(1, min(configured, (nofile - FD_RESERVE) // 2))


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
        #: Over the cap: answered 503, closed once read or after a sweep.
        self.rejected: set[ClientConnection] = set()
        self.max_connections = settings.max_connections
        #: Connections holding a full buffer, oldest first, with the bytes each may hold.
        self.buffering: dict[ClientConnection, int] = {}
        self.buffered = 0
        self.buffer_budget = settings.buffer_budget
        self.draining = False
        #: The HTTP/2 side (sidecar.h2front), made when the first h2c connection arrives.
        self.h2: H2Shared | None = None

    def h2_connections(self) -> int:
        return 0 if self.h2 is None else len(self.h2.fronts)

    def hold(self, conn: ClientConnection, weight: int) -> None:
        """``conn`` holds a full buffer: count it; over the budget, cut the oldest holders
        (a reset: whoever stopped reading longest goes first, so a flood of slow readers
        cannot keep the memory the sidecar needs under its limit)."""
        if conn in self.buffering:
            return
        self.buffering[conn] = weight
        self.buffered += weight
        while self.buffered > self.buffer_budget and self.buffering:
            oldest = next(iter(self.buffering))
            self.release(oldest)
            log.warning("buffer budget of %d bytes reached: cutting the connection that held "
                        "a full buffer longest", self.buffer_budget)
            oldest.abort()

    def release(self, conn: ClientConnection) -> None:
        self.buffered -= self.buffering.pop(conn, 0)

    def close_idle(self, sweeps: int, head_sweeps: int, body_sweeps: int,
                   body_seconds: float) -> None:
        """The client side's timeouts, counted in sweeps; a read resets the idle count.

        - Idle between requests or stuck inside a request head for ``sweeps``: closed.
        - A request head arriving for ``head_sweeps`` (trickled in, which no gap ever
          times out), or bytes sent in as many sweeps in a row without beginning a
          request (empty lines, which llhttp skips): 408 ``request_timeout`` and a
          close. Not while reading is paused: that wait is ours.
        - Paused inside a request body for ``body_sweeps``: 408 ``client_timeout``
          and a close (``body_stalled``).
        - Not reading its response (our writes paused) for ``body_sweeps``: cut.
        - Over the connection cap (``rejected``): reset after two sweeps.

        A request waiting on its backend is the backend's time (``expire``).
        """
        for conn in list(self.rejected):
            conn.idle_sweeps += 1
            if conn.idle_sweeps >= 2:
                conn.abort()
        for conn in [c for c in self.buffering if not c.holds_full_buffer()]:
            self.release(conn)  # a json: body that was read or dropped
        for conn in list(self.connections):
            if not conn.blocked and (conn.in_head or (conn.idle_sweeps == 0 and
                                                      conn.parsing is None and not conn.queue)):
                conn.head_sweeps += 1
                if conn.head_sweeps >= head_sweeps:
                    conn.protocol_error(ProxyError(
                        "request_timeout",
                        f"the request head did not arrive within {self.head_timeout:g}s "
                        "(--client-head-timeout)"))
                    if not conn.write_paused:
                        continue
            if conn.write_paused:
                conn.write_sweeps += 1
                if conn.write_sweeps >= body_sweeps:
                    conn.abort()  # it reads nothing: a reset, not a close that waits on it
                continue
            wait = conn.client_wait()
            if wait == WAIT_NONE:
                continue
            conn.idle_sweeps += 1
            if wait == WAIT_IDLE:
                if conn.idle_sweeps >= sweeps:
                    conn.close_after_flush()
            elif conn.idle_sweeps >= body_sweeps:
                conn.body_stalled(body_seconds)

    def expire(self, now: float) -> None:
        """Time out every exchange whose backend is past its deadline (``shard.io/timeout``).

        A sweep over the connections, not a registry of exchanges in flight: only
        the head of a connection's queue waits on a backend, and the sweep (every
        50 ms) costs less than adding and removing every request. The request path
        sets a deadline for the response head only; the sweep sets the others
        from flags, so a body read costs a store instead of a clock read.
        """
        late: list[Exchange] = []
        for conn in self.connections:
            if not conn.queue:
                continue
            exchange = conn.queue[0]
            up = exchange.upstream
            state = exchange.state
            if up is None or state is None or exchange.finished:
                continue
            if exchange.response_started:
                # Between body reads: the clock restarts with every read, and stands
                # still while the client is the one not reading (close_idle's part).
                if up.active or conn.write_paused or exchange.deadline == 0.0:
                    up.active = False
                    exchange.deadline = now + state.timeout_s
                    continue
            elif conn.blocked & BLOCK_UPSTREAM and exchange.deadline == 0.0:
                # The backend does not read the upload; on_upstream_drained clears this.
                exchange.deadline = now + state.timeout_s
                continue
            if 0.0 < exchange.deadline <= now:
                late.append(exchange)
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
        self.parse: Callable[[bytes], None] = parser.feed_data
        #: The first read goes to first_read (HTTP/2 or not?), every later one to the parser.
        self.feed: Callable[[bytes], None] = self.first_read
        #: A first read that was a piece of the HTTP/2 preface, kept until it is whole.
        self.preface = b""
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
        #: Sweeps since writing to the client paused (it does not read its response).
        self.write_sweeps = 0
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
        ctx = self.ctx
        if len(ctx.connections) + ctx.h2_connections() >= ctx.max_connections:
            self.refuse()
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self.send = transport.write
        ctx.connections.add(self)

    def refuse(self) -> None:
        """Over the cap: 503 and a close. The client's request is read and dropped
        meanwhile, as closing on unread bytes would reset the 503 away."""
        ctx = self.ctx
        transport = self.transport
        assert transport is not None
        self.closing = self.ignore_input = True
        if len(ctx.rejected) >= _REJECTED_LIMIT:
            transport.abort()  # a flood: keep the descriptors for the connections served
            return
        limit = ctx.max_connections
        transport.write(render(ProxyError(
            "too_many_connections", f"the sidecar serves at most {limit} connections at once "
            "(--max-connections or shard.io/max-connections)", limit=limit), close=True))
        transport.write_eof()
        ctx.rejected.add(self)

    def data_received(self, data: bytes) -> None:
        if self.ignore_input:
            if self.transport is not None and self in self.ctx.rejected:
                self.transport.close()  # its request is read: the close will not reset the 503
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

    def first_read(self, data: bytes) -> None:
        """A connection's first bytes: the HTTP/2 preface hands the socket to
        sidecar.h2front; anything else is HTTP/1.1, parsed without this check from now on."""
        seen = self.preface + data if self.preface else data
        head = seen[:24]
        if head == _H2_PREFACE[:len(head)]:
            if len(seen) < 24:
                self.preface = seen  # a preface in pieces: wait for the rest
                return
            from sidecar.h2front import take_over

            self.preface = b""
            take_over(self, seen)
            return
        self.preface = b""
        self.feed = self.parse
        self.parse(seen)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.rejected.discard(self)
        if self in ctx.buffering:
            ctx.release(self)
        for exchange in self.queue:
            exchange.abort()
        if self.parsing is not None:
            self.parsing.abort()
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.ctx.hold(self, BUFFER_WEIGHT)
        self._upstream_reading(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.write_sweeps = 0
        if not self.holds_full_buffer():
            self.ctx.release(self)
        self._upstream_reading(True)

    def holds_full_buffer(self) -> bool:
        """Writes to the client are paused, reading it is paused on a full buffer, or a
        json: body over the usual buffer is being read."""
        if self.write_paused or self.blocked & _FULL:
            return True
        exchange = self.parsing
        if exchange is None or exchange.finished:
            return False
        if exchange.json_mode and exchange.pending_bytes > BUFFER_WEIGHT // 2:
            return True
        # slot mode keeps what it sent of a body for a replay after a 421 (slot_exchange)
        return exchange.replay is not None and exchange.replay_bytes > BUFFER_WEIGHT // 2

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

    def client_wait(self) -> int:
        """What, if anything, this connection waits on its client for (close_idle)."""
        exchange = self.parsing
        if exchange is not None and exchange.headers_done and not exchange.finished:
            # Inside a body: the client owes bytes unless reading is paused on our side
            # or it waits for a 100 Continue not sent yet.
            if self.blocked or (exchange.expect_continue and exchange.upstream is None
                                and not exchange.json_mode):
                return WAIT_NONE
            return WAIT_BODY
        return WAIT_IDLE if self.waiting_for_client() else WAIT_NONE

    def body_stalled(self, seconds: float) -> None:
        """The client paused inside a request body for ``seconds``: 408, then close."""
        exchange = self.parsing
        if exchange is not None and exchange.response_started:
            exchange.cut(True)  # cannot answer anew mid-response
            return
        self.protocol_error(ProxyError(
            "client_timeout", f"the client sent no request body bytes for {seconds:g}s "
            "(--client-body-timeout)", timeout_s=seconds))

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
        if reason & _FULL:
            self.ctx.hold(self, BUFFER_WEIGHT)

    def unblock(self, reason: int) -> None:
        if self.blocked & reason:
            self.blocked &= ~reason
            if not self.blocked and self.transport is not None and not self.closing:
                self.transport.resume_reading()
            if reason & _FULL and not self.holds_full_buffer():
                self.ctx.release(self)

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
        cut = False
        for exchange in list(self.queue):
            if not exchange.headers_done or exchange is self.parsing:
                self.queue.remove(exchange)
                cut = cut or exchange.response_started
                exchange.abort()  # e.g. a bad chunk mid-upload: the backend must not keep it
        if cut:
            self.abort()  # an error answer after a response began would read as its body
            return
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
        self.closing = self.ignore_input = True
        if self.transport is not None:
            self.transport.abort()

    def drain(self) -> None:
        """Graceful shutdown: close now if idle, else after the current response."""
        if not self.queue and self.parsing is None:
            self.close_after_flush()



__all__ = ["ClientConnection", "Context"]
