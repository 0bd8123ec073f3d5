"""The HTTP/2 side of the data port: h2c with prior knowledge, as gRPC clients speak it.

Design rules:
- ``proxy.ClientConnection`` sees the connection preface in a connection's first
  bytes and hands the transport over (``take_over``); HTTP/1.1 pays nothing.
- Each stream is a ``h2bridge.Bridge``, routed on its own; this class only turns
  h2 events into calls on them and writes what h2 has to send, once per turn.
- A malformed frame or a broken rule of HTTP/2 is answered with GOAWAY (h2
  picks PROTOCOL_ERROR and the like) and a close; nothing else is torn down.
- What every HTTP/2 connection shares (backend pools, the sweep that closes idle
  connections) is one ``H2Shared``, made on the first HTTP/2 connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Final

from h2 import events as ev
from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from sidecar.errors import ProxyError
from sidecar.h2bridge import Bridge
from sidecar.h2headers import Headers
from sidecar.h2replay import ReplayBudget
from sidecar.h2stream import StreamPair
from sidecar.h2upstream import H2Pools
from sidecar.h2wire import MAX_CLIENT_STREAMS, new_connection

if TYPE_CHECKING:
    from sidecar.proxy import ClientConnection, Context

log = logging.getLogger("shardmesh.sidecar.h2")

#: Bytes the socket may hold for a client before we stop sending it more (a client
#: that does not read then stops its backends through flow control).
WRITE_HIGH: Final = 256 * 1024
#: Seconds between sweeps: idle clients, idle backend connections.
SWEEP_SECONDS: Final = 1.0


class H2Shared:
    """What every HTTP/2 connection of one sidecar shares."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.pools = H2Pools(ctx.settings.connect_timeout, ctx.stats)
        #: Request bodies kept to send them again (h2replay), bounded for all streams.
        self.replays = ReplayBudget(ctx.settings.buffer_budget, ctx.settings.max_json_body)
        self.fronts: set[H2Front] = set()
        self.sweeper = asyncio.get_running_loop().create_task(self.sweep())

    async def sweep(self) -> None:
        idle = self.ctx.settings.client_idle_seconds
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            for front in list(self.fronts):
                if not front.streams and now - front.last_active > idle:
                    front.go_away(ErrorCodes.NO_ERROR)
            self.pools.sweep()

    def buffered(self) -> int:
        """Bytes held in streams' buffers (both directions), for tests and diagnosis."""
        return sum(b.buffered for f in self.fronts for b in f.streams.values())

    def drain(self) -> None:
        for front in list(self.fronts):
            front.drain()

    def close(self) -> None:
        self.sweeper.cancel()
        for front in list(self.fronts):
            front.abort()
        self.pools.close()


def take_over(conn: ClientConnection, data: bytes) -> None:
    """Serve ``conn``'s socket as HTTP/2 from now on; ``data`` begins with the preface."""
    ctx = conn.ctx
    transport = conn.transport
    assert transport is not None
    shared = ctx.h2
    if shared is None:
        shared = ctx.h2 = H2Shared(ctx)
    ctx.connections.discard(conn)
    conn.ignore_input = True
    front = H2Front(shared, transport)
    transport.set_protocol(front)
    front.data_received(data)


class H2Front(asyncio.Protocol):
    """One client connection speaking HTTP/2."""

    def __init__(self, shared: H2Shared, transport: asyncio.Transport) -> None:
        self.shared = shared
        self.loop = asyncio.get_running_loop()
        self.transport = transport
        self.h2 = new_connection(client_side=False, max_streams=MAX_CLIENT_STREAMS)
        self.streams: dict[int, Bridge] = {}
        self.write_paused = False
        self.flush_scheduled = False
        self.closing = False
        self.draining = False
        self.last_active = time.monotonic()
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        shared.fronts.add(self)
        self.touch()

    # --- asyncio.Protocol -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = time.monotonic()
        try:
            events = self.h2.receive_data(data)
        except H2Error as err:
            log.info("HTTP/2 client broke the protocol: %s: closing with GOAWAY", err)
            self.go_away(ErrorCodes.PROTOCOL_ERROR)  # h2 may have queued a precise one first
            return
        for event in events:
            self.dispatch(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.shared.fronts.discard(self)
        for bridge in list(self.streams.values()):
            bridge.on_client_reset()
        self.streams.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for bridge in list(self.streams.values()):
            bridge.push_down()

    # --- events -------------------------------------------------------------------------

    def dispatch(self, event: ev.Event) -> None:
        sid = getattr(event, "stream_id", 0) or 0
        if isinstance(event, ev.DataReceived):
            bridge = self.streams.get(sid)
            if bridge is None:  # answered already: the rest is read and dropped
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0, sid)
            else:
                bridge.on_client_data(event.data or b"", event.flow_controlled_length or 0,
                                      event.stream_ended is not None)
        elif isinstance(event, ev.RequestReceived):
            bridge = Bridge(self, sid, list(event.headers or ()))
            self.streams[sid] = bridge
            if self.draining:
                bridge.fail(self.shutting_down())
            else:
                bridge.start(self.shared.ctx.map.routes)
        elif isinstance(event, ev.StreamEnded):
            if (bridge := self.streams.get(sid)) is not None:
                bridge.on_client_end()
        elif isinstance(event, ev.TrailersReceived):
            if (bridge := self.streams.get(sid)) is not None:
                headers: Headers = list(event.headers or ())
                bridge.on_client_end(headers)
        elif isinstance(event, ev.StreamReset):
            if (bridge := self.streams.get(sid)) is not None:
                bridge.on_client_reset()
        elif isinstance(event, ev.WindowUpdated | ev.RemoteSettingsChanged):
            if sid:
                if (bridge := self.streams.get(sid)) is not None:
                    bridge.push_down()
            else:
                for bridge in list(self.streams.values()):
                    bridge.push_down()
        elif isinstance(event, ev.ConnectionTerminated):
            self.draining = True  # the client is done: its streams in flight may finish
            if not self.streams:
                self.close()

    @staticmethod
    def shutting_down() -> ProxyError:
        return ProxyError("shutting_down", "the sidecar is shutting down")

    # --- used by bridges ----------------------------------------------------------------

    def stream_done(self, bridge: StreamPair) -> None:
        if self.streams.get(bridge.sid) is bridge:
            del self.streams[bridge.sid]
        if not self.streams:
            self.last_active = time.monotonic()
            if self.draining:
                self.close()

    def touch(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.closing:
            return
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def go_away(self, code: int) -> None:
        with contextlib.suppress(H2Error):
            self.h2.close_connection(error_code=code)
        self.close()

    def drain(self) -> None:
        """Graceful shutdown: GOAWAY (streams in flight finish), close when they have."""
        self.draining = True
        with contextlib.suppress(H2Error):
            self.h2.go_away_gracefully(self.h2.highest_inbound_stream_id)
        self.flush()
        if not self.streams:
            self.close()

    def close(self) -> None:
        self.flush()
        self.closing = True
        self.transport.close()

    def abort(self) -> None:
        self.closing = True
        self.transport.abort()

__all__ = ["H2Front", "H2Shared", "take_over"]
