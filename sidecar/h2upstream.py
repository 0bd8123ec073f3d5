"""HTTP/2 to the backends: multiplexed h2c connections, pooled per ordinal.

Design rules:
- One pool per (route, ordinal, address): a stream for ordinal i is only ever
  opened on a connection to ordinal i's address, so nothing here can reroute.
- Many streams share a connection; another connection to the same ordinal opens
  only when every one is at the backend's SETTINGS_MAX_CONCURRENT_STREAMS (or
  ours, ``MAX_UPSTREAM_STREAMS``).
- A GOAWAY from a backend drains: the streams it still serves finish on the old
  connection, and new streams open a new connection to the same ordinal. The ones
  past its last stream id, and those reset with REFUSED_STREAM, were not processed:
  the stream is told so (``on_unprocessed``) and may send its request again.
- Writes are coalesced: a connection that has frames to send schedules one flush
  for the end of the current event-loop turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final, Protocol

from h2 import events as ev
from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from sidecar.h2wire import MAX_UPSTREAM_STREAMS, new_connection
from sidecar.metrics import Stats, bump

log = logging.getLogger("shardmesh.sidecar.h2")

Headers = list[tuple[bytes, bytes]]
#: Seconds a backend connection with no streams is kept before it is closed.
IDLE_SECONDS: Final = 60.0


class Stream(Protocol):
    """What an upstream connection reports to (the client-side stream, ``h2bridge.Bridge``)."""

    finished: bool

    def attach(self, conn: UpstreamH2) -> None: ...
    def connect_failed(self, reason: str) -> None: ...
    def on_response(self, headers: Headers) -> None: ...
    def on_data(self, data: bytes, flow_length: int) -> None: ...
    def on_trailers(self, headers: Headers) -> None: ...
    def on_end(self) -> None: ...
    def on_reset(self, code: int) -> None: ...
    def on_lost(self, reason: str) -> None: ...
    def on_unprocessed(self, reason: str) -> None: ...
    def push_up(self) -> None: ...


class UpstreamH2(asyncio.Protocol):
    """One h2c connection to one backend ordinal."""

    def __init__(self, pool: H2Pool) -> None:
        self.pool = pool
        self.h2 = new_connection(client_side=True, max_streams=MAX_UPSTREAM_STREAMS)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.accepting = True
        self.closed = False
        self.write_paused = False
        self.flush_scheduled = False
        self.idle_since = time.monotonic()

    # --- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.accepting = False
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.on_lost(f"the connection to ordinal {self.pool.ordinal} closed"
                           + (f" ({exc})" if exc else ""))
        self.pool.forget(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.push_up()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error as err:
            log.warning("ordinal %s of route %s broke HTTP/2: %s", self.pool.ordinal,
                        self.pool.route, err)
            self.close_with(ErrorCodes.PROTOCOL_ERROR)
            return
        for event in events:
            self.dispatch(event)
        self.flush()

    # --- events -----------------------------------------------------------------------

    def dispatch(self, event: ev.Event) -> None:
        if isinstance(event, ev.DataReceived):
            stream = self.streams.get(event.stream_id or 0)
            if stream is None:
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0,
                                                  event.stream_id or 0)
            else:
                stream.on_data(event.data or b"", event.flow_controlled_length or 0)
        elif isinstance(event, ev.ResponseReceived):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                stream.on_response(list(event.headers or ()))
        elif isinstance(event, ev.TrailersReceived):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                stream.on_trailers(list(event.headers or ()))
        elif isinstance(event, ev.StreamEnded):
            stream = self.streams.pop(event.stream_id or 0, None)
            if stream is not None:
                stream.on_end()
            self.stream_done()
        elif isinstance(event, ev.StreamReset):
            stream = self.streams.pop(event.stream_id or 0, None)
            if stream is not None:
                if event.error_code == ErrorCodes.REFUSED_STREAM:  # not processed (RFC 9113 §8.7)
                    stream.on_unprocessed("refused the stream (REFUSED_STREAM)")
                else:
                    stream.on_reset(int(event.error_code or 0))
            self.stream_done()
        elif isinstance(event, ev.WindowUpdated):
            if not event.stream_id:
                for stream in list(self.streams.values()):
                    stream.push_up()
            elif (stream := self.streams.get(event.stream_id)) is not None:
                stream.push_up()
        elif isinstance(event, ev.RemoteSettingsChanged):
            for stream in list(self.streams.values()):
                stream.push_up()
            self.pool.kick()
        elif isinstance(event, ev.ConnectionTerminated):
            self.goaway(event.last_stream_id or 0, event.error_code)

    def goaway(self, last_stream_id: int, code: object) -> None:
        """Drain: no new streams; those past ``last_stream_id`` were never processed, so
        they may be sent again (to this ordinal: the pool's next connection)."""
        self.accepting = False
        for sid in [s for s in self.streams if s > last_stream_id]:
            self.streams.pop(sid).on_unprocessed(f"went away (GOAWAY {code}) before "
                                                 "processing the request")
        self.pool.kick()  # waiting streams now need a new connection to the same ordinal
        self.stream_done()

    # --- used by streams --------------------------------------------------------------

    def has_room(self) -> bool:
        if not self.accepting or self.closed or self.transport is None:
            return False
        limit = min(self.h2.remote_settings.max_concurrent_streams, MAX_UPSTREAM_STREAMS)
        return len(self.streams) < limit

    def open(self, stream: Stream, headers: Headers, end_stream: bool) -> int:
        """Start a stream with ``headers``; its id."""
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, headers, end_stream=end_stream)
        self.streams[sid] = stream
        self.touch()
        return sid

    def cancel(self, sid: int, code: int = ErrorCodes.CANCEL) -> None:
        """The client left or timed out: RST_STREAM to the backend."""
        if self.streams.pop(sid, None) is not None and not self.closed:
            with contextlib.suppress(H2Error):
                self.h2.reset_stream(sid, code)
            self.touch()
            self.stream_done()

    def stream_done(self) -> None:
        if not self.streams:
            self.idle_since = time.monotonic()
            if not self.accepting:
                self.close_with(ErrorCodes.NO_ERROR)
        self.pool.kick()

    def touch(self) -> None:
        """Frames are waiting: flush them at the end of this event-loop turn."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def close_with(self, code: int) -> None:
        self.accepting = False
        if self.closed:
            return
        with contextlib.suppress(H2Error):
            self.h2.close_connection(error_code=code)
        self.flush()
        if self.transport is not None:
            self.transport.close()
        self.closed = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.on_lost(f"the connection to ordinal {self.pool.ordinal} was closed")
        self.pool.forget(self)


class H2Pool:
    """The h2c connections to one ordinal's address, and streams waiting for room."""

    def __init__(self, route: str, ordinal: int, address: tuple[str, int],
                 connect_timeout: float, stats: Stats) -> None:
        self.route, self.ordinal, self.address = route, ordinal, address
        self.connect_timeout = connect_timeout
        self.stats = stats
        self.conns: list[UpstreamH2] = []
        self.waiting: list[Stream] = []
        self.connecting = False

    def assign(self, stream: Stream) -> None:
        """Attach ``stream`` to a connection with room now, or once one is made."""
        for conn in self.conns:
            if conn.has_room():
                stream.attach(conn)
                return
        self.waiting.append(stream)
        self.kick()

    def kick(self) -> None:
        """Hand waiting streams to connections with room; connect when none has any."""
        while self.waiting:
            conn = next((c for c in self.conns if c.has_room()), None)
            if conn is None:
                if not self.connecting:
                    self.connecting = True
                    asyncio.get_running_loop().create_task(self.connect())
                return
            stream = self.waiting.pop(0)
            if not stream.finished:
                stream.attach(conn)

    async def connect(self) -> None:
        """A new connection to this ordinal; one retry, to the same address (as HTTP/1.1)."""
        loop = asyncio.get_running_loop()
        host, port = self.address
        label = (self.route, str(self.ordinal))
        error: BaseException | None = None
        try:
            for _ in range(2):
                try:
                    async with asyncio.timeout(self.connect_timeout):
                        _, conn = await loop.create_connection(lambda: UpstreamH2(self),
                                                               host, port)
                except (OSError, TimeoutError) as err:
                    error = err
                    bump(self.stats.connect_failures, *label)
                    continue
                bump(self.stats.upstream_connects, *label)
                self.conns.append(conn)
                return
        finally:
            self.connecting = False
            if error is None or self.conns:
                self.kick()
        waiting, self.waiting = self.waiting, []
        reason = (f"cannot connect to ordinal {self.ordinal} of route '{self.route}' at "
                  f"{host}:{port}: {error or 'timeout'}")
        for stream in waiting:
            stream.connect_failed(reason)

    def forget(self, conn: UpstreamH2) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        self.kick()

    def close_idle(self, now: float) -> None:
        for conn in list(self.conns):
            if not conn.streams and now - conn.idle_since > IDLE_SECONDS:
                conn.close_with(ErrorCodes.NO_ERROR)

    def close(self) -> None:
        for conn in list(self.conns):
            conn.close_with(ErrorCodes.NO_ERROR)


class H2Pools:
    """Every ordinal's pool, by (route, ordinal, address)."""

    def __init__(self, connect_timeout: float, stats: Stats) -> None:
        self.connect_timeout, self.stats = connect_timeout, stats
        self.pools: dict[tuple[str, int, tuple[str, int]], H2Pool] = {}

    def get(self, route: str, ordinal: int, address: tuple[str, int]) -> H2Pool:
        key = (route, ordinal, address)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = H2Pool(route, ordinal, address, self.connect_timeout,
                                            self.stats)
        return pool

    def sweep(self) -> None:
        """Close idle backend connections and forget pools with nothing in them."""
        now = time.monotonic()
        for key, pool in list(self.pools.items()):
            pool.close_idle(now)
            if not pool.conns and not pool.waiting and not pool.connecting:
                del self.pools[key]

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
