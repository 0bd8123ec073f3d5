"""Upstream side: per-ordinal keep-alive pools and the backend response parser.

Design rules:
- A pool belongs to one (route, ordinal, address). A connection opened for
  ordinal i is only ever used for ordinal i, even if the address later moves to
  another ordinal (the map change drops the old pool).
- One request at a time per connection; a connection goes back to its pool only
  when the response is complete, the request was sent whole, and the backend
  kept it alive. Anything else closes it.
- The response parser reports to its exchange through the ``Listener`` methods
  (``on_response_*``, ``on_upstream_*``); it never writes to the client itself.
  ``Listener`` is the exchange's base class, declared here so that this module
  needs no import of the exchange's: compiled, the calls stay native ones.
- The pools are found by route state (``Pools.pool``): the shard map holds no
  connections, and a new state of a route starts from the pools of its addresses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import httptools

from sidecar import http11
from sidecar.metrics import Slot, Stats
from sidecar.shardmap import RouteState


class _HeadersOnly(Exception):
    """Raised from the parser callback to stop after the head of a HEAD response."""


class Listener:
    """What a connection reports its response to: the exchange (``h1relay.Relay``)
    overrides every method. A base class, not a Protocol: compiled, a call through it
    is a native (vtable) call."""

    def on_response_head(self, up: UpstreamConnection) -> None:
        raise NotImplementedError

    def on_response_body(self, data: bytes) -> None:
        raise NotImplementedError

    def on_response_done(self, up: UpstreamConnection) -> None:
        raise NotImplementedError

    def on_upstream_lost(self, up: UpstreamConnection, error: str) -> None:
        raise NotImplementedError

    def on_upstream_full(self) -> None:
        raise NotImplementedError

    def on_upstream_drained(self) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Write what the reads just relayed to the client (once per read)."""
        raise NotImplementedError


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend pod; parses its responses."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self._new_parser()
        self.send: Callable[[bytes], None] = not_connected
        self.listener: Listener | None = None
        self.closed = False
        #: Served at least one request (a stale keep-alive may fail without our fault).
        self.used = False
        self.head_only = False
        self.status = 0
        #: The client's response head as it is built: [status line, name, ": ", value, CRLF...]
        self.head: list[bytes] = [b""]
        self.content_length: bytes | None = None
        self.chunked = False
        self.drop: frozenset[bytes] = frozenset()
        self.informational = False
        self.got_bytes = False
        self.keep_alive = True
        self.complete = False
        #: Bytes arrived since the last timeout sweep (Context.expire): one store per
        #: read instead of a clock read, for the idle timeout between body reads.
        self.active = False

    def _new_parser(self) -> None:
        self.parser = parser = httptools.HttpResponseParser(self)
        # Bound once (see ClientConnection.__init__).
        self.feed: Callable[[bytes], None] = parser.feed_data
        self.get_status_code: Callable[[], int] = parser.get_status_code
        self.should_keep_alive: Callable[[], bool] = parser.should_keep_alive

    # --- used by the exchange ---------------------------------------------

    def start(self, listener: Listener, data: bytes, head_only: bool) -> None:
        """Send a request head (and whatever body is at hand) and listen for the answer."""
        if self.used:
            self.status = 0
            self.head = [b""]
            self.content_length = None
            self.chunked = self.got_bytes = self.complete = False
            self.keep_alive = True
            if len(self.drop):  # len(): compiled, a field read; truth is a generic call
                self.drop = frozenset()
        self.head_only = head_only
        self.listener = listener
        self.send(data)

    def set_reading(self, on: bool) -> None:
        """Pause or resume reading from the backend (the client's backpressure)."""
        if self.transport is not None:
            if on:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def finish(self, reusable: bool) -> None:
        """The exchange is done with this connection: pool it or close it."""
        self.listener = None
        self.used = True
        if reusable and self.keep_alive and not self.closed and self.complete:
            self.pool.give_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.listener = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    # --- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        # As for clients (proxy.WRITE_HIGH): an upload waits on each write the backend
        # does not take at once, and the buffer it holds counts against the budget.
        transport.set_write_buffer_limits(high=0)
        self.send = transport.write

    def data_received(self, data: bytes) -> None:
        listener = self.listener
        if listener is None:
            self.abort()  # bytes on an idle connection: the stream is out of step
            return
        self.got_bytes = self.active = True
        try:
            self.feed(data)
        except httptools.HttpParserError as err:
            if isinstance(err.__context__, _HeadersOnly):
                self._new_parser()
                self.complete = True
                listener.on_response_done(self)
            else:
                listener.on_upstream_lost(self, f"invalid response from the backend: {err}")
                self.abort()
        listener.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        listener, self.listener = self.listener, None
        if listener is None:
            return
        # Only a clean close (FIN) ends a close-delimited body: after a reset (exc set)
        # the body may be cut short, and relaying it as whole would hide that.
        if exc is None and self.status >= 200 and self._close_delimited():
            self.complete, self.keep_alive = True, False
            listener.on_response_done(self)
        else:
            listener.on_upstream_lost(self, f"the backend closed the connection: {exc or 'EOF'}")
        listener.flush()

    def pause_writing(self) -> None:
        if self.listener is not None:
            self.listener.on_upstream_full()

    def resume_writing(self) -> None:
        if self.listener is not None:
            self.listener.on_upstream_drained()

    def _close_delimited(self) -> bool:
        return (self.content_length is None and not self.chunked and not self.head_only
                and self.status not in http11.NO_BODY_STATUS)

    # --- httptools callbacks ----------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        special = http11.response_special(name)
        if not len(special):
            head = self.head
            head.append(name)
            head.append(b": ")
            head.append(value)
            head.append(b"\r\n")
        elif special == b"content-length":
            self.content_length = value
        elif special == b"transfer-encoding":
            self.chunked = b"chunked" in value.lower()
        elif special == b"connection":
            tokens = http11.connection_tokens(value)
            if len(tokens):
                self.drop = self.drop | tokens

    def on_headers_complete(self) -> None:
        status = self.get_status_code()
        if status < 200:
            # 1xx (e.g. 103 Early Hints): not forwarded; the final response follows.
            self.informational = True
            self.head, self.drop = [b""], frozenset()
            return
        self.status = status
        self.head[0] = http11.STATUS_LINES[status]  # llhttp refuses a status over 999
        self.keep_alive = self.should_keep_alive()
        if len(self.drop):
            head, drop = self.head, self.drop
            kept = [head[0]]
            for i in range(1, len(head) - 3, 4):
                if head[i].lower() not in drop:
                    kept += head[i:i + 4]
            self.head = kept
        listener = self.listener
        if listener is not None:
            listener.on_response_head(self)
        if self.head_only:
            raise _HeadersOnly

    def on_body(self, data: bytes) -> None:
        if self.informational:
            return
        listener = self.listener
        if listener is not None:
            listener.on_response_body(data)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.complete = True
        if self.listener is not None:
            self.listener.on_response_done(self)


def not_connected(data: bytes) -> None:
    """What ``send`` is until ``connection_made`` binds the transport's write."""
    raise RuntimeError("write before the connection was made")


class Pool:
    """Idle keep-alive connections to one ordinal of one route at one address."""

    __slots__ = ("route", "ordinal", "address", "idle", "max_idle", "closed", "label", "slot")

    def __init__(self, route: str, ordinal: int, address: tuple[str, int], max_idle: int,
                 slot: Slot) -> None:
        self.route, self.ordinal, self.address = route, ordinal, address
        #: Where the requests sent to this ordinal are counted.
        self.slot = slot
        self.idle: list[UpstreamConnection] = []
        self.max_idle = max_idle
        self.closed = False
        self.label = (route, str(ordinal))

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def give_back(self, conn: UpstreamConnection) -> None:
        if self.closed or len(self.idle) >= self.max_idle:
            conn.abort()
            return
        conn.set_reading(True)  # so a backend's close is noticed while idle
        self.idle.append(conn)

    async def connect(self, timeout: float) -> UpstreamConnection:
        """A new connection; raises OSError or TimeoutError when it cannot be made."""
        loop = asyncio.get_running_loop()
        host, port = self.address
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_connection(lambda: UpstreamConnection(self), host, port)
        return protocol

    def close(self) -> None:
        self.closed = True
        for conn in self.idle:
            conn.abort()
        self.idle.clear()


class Pools:
    """Every pool, by (route, ordinal, address)."""

    def __init__(self, max_idle: int, stats: Stats) -> None:
        self.max_idle = max_idle
        self.stats = stats
        self.pools: dict[tuple[str, int, tuple[str, int]], Pool] = {}
        #: Route name -> (its state requests were last sent with, ordinal -> pool):
        #: a cache, so that the request path finds a pool by ordinal only.
        self.by_state: dict[str, tuple[RouteState, dict[int, Pool]]] = {}
        # The last of them, checked first: one route, or a run of requests to one.
        self.last: RouteState | None = None
        self.last_pools: dict[int, Pool] = {}

    def pool(self, state: RouteState, ordinal: int, address: tuple[str, int]) -> Pool:
        """The pool of ``ordinal`` (at ``address``) for a request routed with ``state``."""
        if state is self.last:
            pools = self.last_pools
        else:
            cached = self.by_state.get(state.name)
            if cached is None or cached[0] is not state:
                cached = self.by_state[state.name] = (state, {})
            self.last, self.last_pools = state, cached[1]
            pools = cached[1]
        pool = pools.get(ordinal)
        if pool is None:
            pool = pools[ordinal] = self.get(state.name, ordinal, address)
        return pool

    def get(self, route: str, ordinal: int, address: tuple[str, int]) -> Pool:
        key = (route, ordinal, address)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(route, ordinal, address, self.max_idle,
                                          self.stats.slot(route, str(ordinal)))
        return pool

    def retain(self, route: str, current: set[tuple[int, tuple[str, int]]]) -> None:
        """Close the pools of ``route`` whose (ordinal, address) is no longer in the map."""
        self.by_state.pop(route, None)
        if self.last is not None and self.last.name == route:
            self.last, self.last_pools = None, {}
        for key in [k for k in self.pools if k[0] == route and (k[1], k[2]) not in current]:
            self.pools.pop(key).close()

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
        self.by_state.clear()
        self.last, self.last_pools = None, {}
