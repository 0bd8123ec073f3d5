"""The HTTP/1.1 front end's shared ground: what every connection shares (``Context``)
and a client connection as its exchanges see it (``ClientBase``).

Design rules:
- This module sits below the exchange (``h1relay``, ``exchange``) and the
  connection (``h1requests``, ``proxy``), which each use the other: each side is
  typed here, by a base class, so no module imports one above it. Compiled,
  calls through a base class are native (vtable) calls, as the concrete ones were.
- ``ClientBase`` holds the connection's output (responses collected in ``out``,
  written once per event by ``flush``) and its read flow control (``block`` /
  ``unblock`` by reason bits); what needs the request parser or the queue of
  exchanges is declared here and done by ``proxy.ClientConnection``.
- The buffer budget is the context's: a connection holding a full buffer is
  counted (``hold``) and, over the budget, the one that held its buffer longest
  is cut.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from sidecar.metrics import Stats
from sidecar.settings import Settings
from sidecar.shardmap import ShardMap
from sidecar.upstream import Listener, Pools, not_connected

log = logging.getLogger("shardmesh.sidecar.proxy")

# Reasons reading from a client is paused (a bit set, resumed when all clear).
BLOCK_PENDING: Final = 1
BLOCK_UPSTREAM: Final = 2
BLOCK_PIPELINE: Final = 4
_FULL: Final = BLOCK_PENDING | BLOCK_UPSTREAM
#: What a connection holding a full buffer adds to RSS, as measured with 300 clients not
#: reading a large body: one read from the other side and the allocator's overhead.
BUFFER_WEIGHT: Final = 448 * 1024

#: Hands a connection that opened with the HTTP/2 preface to the HTTP/2 side, with the
#: bytes read so far (``h2front.take_over``, which app.py imports only when first needed).
HandOff = Callable[["ClientBase", bytes], None]


class Context:
    """What every connection shares: settings, the map, the pools, the stats."""

    def __init__(self, settings: Settings, shard_map: ShardMap, pools: Pools,
                 stats: Stats, h2_hand_off: HandOff | None = None) -> None:
        self.settings, self.map, self.pools, self.stats = settings, shard_map, pools, stats
        # Read on every request: native fields here, where Settings (not compiled) would
        # cost an attribute lookup each.
        self.max_request_line = settings.max_request_line
        self.max_header_bytes = settings.max_header_bytes
        self.head_timeout = settings.client_head_seconds
        self.connections: set[ClientBase] = set()
        #: Over the cap: answered 503, closed once read or after a sweep.
        self.rejected: set[ClientBase] = set()
        self.max_connections = settings.max_connections
        #: Connections holding a full buffer, oldest first, with the bytes each may hold.
        self.buffering: dict[ClientBase, int] = {}
        self.buffered = 0
        self.buffer_budget = settings.buffer_budget
        self.draining = False
        #: None: the HTTP/2 preface is not recognised (HTTP/1.1 only).
        self.h2_hand_off = h2_hand_off
        #: The HTTP/2 side (``h2front.H2Shared``), made when the first h2c connection
        #: arrives; typed loosely, as h2front sits above this module.
        self.h2: Any = None

    def h2_connections(self) -> int:
        return 0 if self.h2 is None else len(self.h2.fronts)

    def hold(self, conn: ClientBase, weight: int) -> None:
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

    def release(self, conn: ClientBase) -> None:
        self.buffered -= self.buffering.pop(conn, 0)


class ClientBase(asyncio.Protocol):
    """One client socket's output and read flow control (``proxy.ClientConnection``
    is the whole connection)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        #: The request clock (latency, deadlines): not loop.time(), which uvloop
        #: keeps in whole milliseconds. Bound once (see ClientConnection.__init__).
        self.now: Callable[[], float] = time.monotonic
        self.send: Callable[[bytes], None] = not_connected
        self.out: list[bytes] = []
        self.blocked = 0
        self.write_paused = False
        self.closing = False
        #: Nothing more is parsed (after a protocol error or an upgrade request).
        self.ignore_input = False

    # --- done by ClientConnection (declared here for the exchanges) ---------------

    def exchange_done(self, exchange: Listener, close_after: bool) -> None:
        """``exchange`` (the head of the queue) answered: close (``close_after``) or
        start the next one."""
        raise NotImplementedError

    def close_after_flush(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def holds_full_buffer(self) -> bool:
        raise NotImplementedError

    # --- output and flow control ----------------------------------------------------

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
