"""The data plane's server side: one ``ClientConnection`` per client socket.

Design rules:
- httptools parses the requests (``h1requests``); each becomes an ``Exchange``
  (``exchange``) in a queue answered strictly in order (pipelining). Only the head
  of the queue talks to a backend; a deep queue pauses reading.
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
  (``h1timeouts.expire`` every 50 ms for the backend side, ``h1timeouts.close_idle``
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
from collections.abc import Callable
from typing import Final, cast

import httptools

from sidecar.errors import ProxyError, render
from sidecar.h1base import BLOCK_PENDING, BLOCK_PIPELINE, BLOCK_UPSTREAM, BUFFER_WEIGHT, Context
from sidecar.h1requests import PIPELINE_LIMIT, RequestReader
from sidecar.upstream import Listener

#: The HTTP/2 connection preface (RFC 9113 §3.4), as h2c clients with prior knowledge
#: (gRPC) open a connection.
_H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: File descriptors kept free of client connections: listeners, the event loop, probes,
#: the Kubernetes client, idle pooled connections beyond one per client.
FD_RESERVE: Final = 80
#: Refused connections lingering for their 503 to be read; beyond, refusals are resets.
_REJECTED_LIMIT: Final = 256
#: Any bytes the socket did not take at once pause the other side's reading until they
#: are written: a small response never waits, and a connection holds at most one read
#: (uvloop reads up to 256 KiB at a time) that it counts against the buffer budget.
WRITE_HIGH: Final = 0
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


class ClientConnection(RequestReader):
    """One client socket: parses requests (``RequestReader``), queues exchanges,
    writes responses in order."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        #: The first read goes to first_read (HTTP/2 or not?), every later one to the parser.
        self.feed: Callable[[bytes], None] = self.first_read
        #: A first read that was a piece of the HTTP/2 preface, kept until it is whole.
        self.preface = b""
        #: Idle sweeps (h1timeouts.close_idle) since the client last sent bytes.
        self.idle_sweeps = 0
        #: Sweeps since writing to the client paused (it does not read its response).
        self.write_sweeps = 0
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
        hand_off = self.ctx.h2_hand_off
        if head == _H2_PREFACE[:len(head)] and hand_off is not None:
            if len(seen) < 24:
                self.preface = seen  # a preface in pieces: wait for the rest
                return
            self.preface = b""
            hand_off(self, seen)
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

    def exchange_done(self, exchange: Listener, close_after: bool) -> None:
        queue = self.queue
        if queue and queue[0] is exchange:
            queue.pop(0)
        if close_after:
            self.close_after_flush()
            return
        if self.final_error is not None and not queue:
            self.write(self.final_error)
            self.close_after_flush()
            return
        if self.blocked & BLOCK_PIPELINE and len(queue) <= PIPELINE_LIMIT // 2:
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


__all__ = ["BUFFER_WEIGHT", "ClientConnection", "Context", "effective_max_connections"]
