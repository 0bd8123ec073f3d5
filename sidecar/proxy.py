"""The data plane: the client-side HTTP/1.1 server that routes each request to its ordinal.

Design rules:
- One ``ClientConnection`` per client socket parses requests with httptools;
  each request is an ``Exchange``. Exchanges are answered strictly in order
  (pipelining): only the head of the queue talks to a backend.
- The hot path (a pooled connection is idle, the key is in a header) is fully
  synchronous: no task, no future. Tasks appear only to connect, to wait for a
  shard (``wait:<ms>``), or to read a whole body for a ``json:`` key.
- Backpressure both ways: a full upstream write buffer pauses reading from the
  client, a full client write buffer pauses reading from the backend.
- A request for ordinal i goes to ordinal i's pool or nowhere. The only retry
  is a new connection to the same ordinal when the connection could not be
  made (or a pooled idle connection turned out closed before any answer).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import cast

import httptools

from sidecar import http11, keys
from sidecar.errors import ProxyError, json_response, render
from sidecar.introspect import introspect
from sidecar.metrics import Stats
from sidecar.settings import Settings
from sidecar.shardmap import Resolution, RouteState, ShardMap, resolve
from sidecar.upstream import Pools, UpstreamConnection

log = logging.getLogger("shardmesh.sidecar.proxy")

_HEAD = b"HEAD"
_RETRY_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
#: Bytes of request body held for a request not yet connected before reading pauses.
_PENDING_LIMIT = 256 * 1024
# Reasons reading from a client is paused (a bit set, resumed when all clear).
_BLOCK_PENDING, _BLOCK_UPSTREAM = 1, 2


class Context:
    """What every connection shares: settings, the map, the pools, the stats."""

    def __init__(self, settings: Settings, shard_map: ShardMap, pools: Pools,
                 stats: Stats) -> None:
        self.settings, self.map, self.pools, self.stats = settings, shard_map, pools, stats
        self.connections: set[ClientConnection] = set()
        self.draining = False


class Exchange:
    """One request and its response."""

    __slots__ = (
        "conn", "method", "url", "headers", "content_length", "chunked", "expect_continue",
        "keep_alive", "http10", "headers_done", "request_done", "pending", "pending_bytes",
        "discard", "upstream", "resolution", "task", "timer", "started", "status",
        "response_started", "response_chunked", "response_close", "finished", "json_mode",
        "close_after", "drop", "retried", "state", "target",
    )

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.method = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes, bytes]] = []
        self.content_length: bytes | None = None
        self.chunked = False
        self.expect_continue = False
        self.keep_alive = True
        self.http10 = False
        self.headers_done = False
        self.request_done = False
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.discard = False
        self.upstream: UpstreamConnection | None = None
        self.resolution: Resolution | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.started = 0.0
        self.status = 0
        self.response_started = False
        self.response_chunked = False
        self.response_close = False
        self.finished = False
        self.json_mode = False
        self.close_after = False
        self.drop: frozenset[bytes] = frozenset()
        self.retried = False
        self.state: RouteState | None = None
        self.target = b""

    @property
    def has_body(self) -> bool:
        return self.chunked or (self.content_length is not None and
                                self.content_length.strip() not in (b"0", b""))

    # --- request side -------------------------------------------------------

    def start(self) -> None:
        """Route the request (called once, when it is the head of the queue)."""
        conn = self.conn
        self.started = conn.loop.time()
        parts = http11.split_target(self.url)
        if parts is None:
            self.fail(ProxyError("bad_request", f"request target '{self.url.decode('latin-1')}' "
                                 "is not /<route>/<path>"))
            return
        name, self.target, rest, query = parts
        if name == b"_shard":
            self.local(introspect(conn.ctx.map, self.method, rest, query))
            return
        state = conn.ctx.map.routes.get(name)
        if state is None:
            route = name.decode("latin-1")
            self.fail(ProxyError("unknown_route", f"no route '{route}' (known: "
                                 f"{', '.join(sorted(r.decode() for r in conn.ctx.map.routes))})",
                                 route=route))
            return
        self.state = state
        if state.spec.key.kind == "json":
            self.json_mode = True
            conn.unblock(_BLOCK_PENDING)  # a json: key reads up to max_json_body first
            self.check_json_size()
            if self.finished:
                return
            if self.expect_continue and not self.request_done:
                conn.write(http11.CONTINUE)
            if self.request_done:
                self.route_json()
            return
        try:
            key = self.key_from_head(state, rest, query)
        except ProxyError as err:
            self.fail(err)
            return
        self.route_key(state, key)

    def key_from_head(self, state: RouteState, rest: bytes, query: bytes) -> str:
        source = state.spec.key
        if source.kind == "header":
            wanted = state.key_header
            for lname, _, value in self.headers:
                if lname == wanted:
                    return keys.from_header(value, source)
            return keys.from_header(None, source)
        if source.kind == "query":
            return keys.from_query(query, source)
        return keys.from_path(rest, source)

    def route_json(self) -> None:
        assert self.state is not None
        body, self.pending, self.pending_bytes = b"".join(self.pending), [], 0
        try:
            key = keys.from_json(body, self.state.spec.key)
        except ProxyError as err:
            self.fail(err)
            return
        self.pending, self.pending_bytes = [body], len(body)
        self.route_key(self.state, key)

    def route_key(self, state: RouteState, key: str) -> None:
        try:
            resolution = resolve(state, key)
        except ProxyError as err:
            if state.spec.wait_ms and err.code in ("shard_unavailable", "shard_map_not_ready"):
                self.task = self.conn.loop.create_task(self.wait_for_shard(state.spec.name, key))
                return
            self.fail(err)
            return
        self.send(resolution)

    async def wait_for_shard(self, route: str, key: str) -> None:
        """``wait:<ms>``: re-resolve on every map change until ready or the wait is over."""
        ctx = self.conn.ctx
        loop = self.conn.loop
        deadline = self.started + ctx.map.get(route).spec.wait_ms / 1000  # type: ignore[union-attr]
        while True:
            state = ctx.map.get(route)
            if state is None:
                self.fail(ProxyError("unknown_route", f"route '{route}' was removed", route=route))
                return
            try:
                resolution = resolve(state, key)
            except ProxyError as err:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    err.message += f" (waited {state.spec.wait_ms} ms)"
                    self.fail(err)
                    return
                try:
                    async with asyncio.timeout(remaining):
                        await ctx.map.changed(route)
                except TimeoutError:
                    pass
                continue
            self.task = None
            self.send(resolution)
            return

    def send(self, resolution: Resolution) -> None:
        """Forward to the resolved ordinal: an idle pooled connection now, else connect."""
        self.resolution = resolution
        shard = resolution.shard
        assert shard.address is not None
        pool = self.conn.ctx.pools.get(resolution.route.spec.name, resolution.ordinal,
                                       shard.address)
        upstream = pool.take_idle()
        if upstream is None:
            self.task = self.conn.loop.create_task(self.connect_and_send(pool))
        else:
            self.attach(upstream)

    async def connect_and_send(self, pool: object) -> None:
        from sidecar.upstream import Pool

        assert isinstance(pool, Pool)
        ctx = self.conn.ctx
        stats = ctx.stats
        error: Exception | None = None
        for _ in range(2):  # one retry, to the same ordinal, only because no connection was made
            try:
                upstream = await pool.connect(ctx.settings.connect_timeout)
            except (OSError, TimeoutError) as err:
                error = err
                stats.connect_failures[pool.label] = stats.connect_failures.get(pool.label, 0) + 1
                continue
            stats.upstream_connects[pool.label] = stats.upstream_connects.get(pool.label, 0) + 1
            self.task = None
            if self.finished:
                pool.give_back(upstream)  # the client left meanwhile; the connection is fresh
            else:
                self.attach(upstream)
            return
        self.task = None
        host, port = pool.address
        self.fail(ProxyError("upstream_error", f"cannot connect to ordinal {pool.ordinal} of "
                             f"route '{pool.route}' at {host}:{port}: {error or 'timeout'}",
                             route=pool.route, ordinal=pool.ordinal))

    def attach(self, upstream: UpstreamConnection) -> None:
        """Send the head (and any body already read) on ``upstream``."""
        resolution = self.resolution
        assert resolution is not None
        conn = self.conn
        self.upstream = upstream
        parts = [self.method, b" ", self.target, b" HTTP/1.1\r\n"]
        drop = self.drop
        for lname, name, value in self.headers:
            if not drop or lname not in drop:
                parts += (name, b": ", value, b"\r\n")
        parts.append(http11.shard_headers(resolution.ordinal, resolution.route.count))
        if self.chunked:
            parts.append(http11.CHUNKED)
        elif self.content_length is not None:
            parts += (b"Content-Length: ", self.content_length, b"\r\n")
        parts.append(b"\r\n")
        if self.pending:
            if self.chunked:
                parts += [http11.chunk(p) for p in self.pending]
            else:
                parts += self.pending
            self.pending, self.pending_bytes = [], 0
            conn.unblock(_BLOCK_PENDING)
        if self.request_done and self.chunked:
            parts.append(http11.LAST_CHUNK)
        if self.expect_continue and not self.request_done and not self.json_mode:
            conn.write(http11.CONTINUE)
            conn.flush()
        upstream.start(self, b"".join(parts), self.method == _HEAD)
        self.timer = conn.loop.call_later(resolution.route.spec.timeout_s, self.on_timeout)
        if conn.write_paused and upstream.transport is not None:
            upstream.transport.pause_reading()

    def body(self, data: bytes) -> None:
        """A piece of the request body from the client."""
        if self.discard:
            return
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.write(http11.chunk(data) if self.chunked else data)
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.json_mode:
            self.check_json_size()
        elif self.pending_bytes > _PENDING_LIMIT:
            self.conn.block(_BLOCK_PENDING)

    def check_json_size(self) -> None:
        limit = self.conn.ctx.settings.max_json_body
        if self.pending_bytes > limit:
            self.fail(ProxyError("body_too_large", f"the body is over {limit} bytes, too large "
                                 "to read a json: shard key from", limit=limit))

    def complete(self) -> None:
        """The client sent the whole request."""
        self.request_done = True
        if self.discard:
            return
        upstream = self.upstream
        if upstream is not None:
            if self.chunked and upstream.transport is not None:
                upstream.transport.write(http11.LAST_CHUNK)
        elif self.json_mode and self.state is not None and self.task is None and \
                self.headers_done and self.conn.queue and self.conn.queue[0] is self:
            self.route_json()

    # --- response side (UpstreamListener) ------------------------------------

    def on_response_head(self, up: UpstreamConnection) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        resolution = self.resolution
        assert resolution is not None
        self.status = status = up.status
        conn = self.conn
        parts = [b"HTTP/1.1 %d %b\r\n" % (status, up.reason)]
        for name, value in up.headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(http11.ordinal_header(resolution.ordinal))
        no_body = self.method == _HEAD or status in http11.NO_BODY_STATUS
        if up.content_length is not None:
            parts += (b"Content-Length: ", up.content_length, b"\r\n")
        elif not no_body:
            if self.http10:
                self.response_close = True  # HTTP/1.0 has no chunked: the close ends the body
            else:
                self.response_chunked = True
                parts.append(http11.CHUNKED)
        close = not self.keep_alive or self.response_close or conn.ctx.draining
        if close:
            self.close_after = True
            parts.append(http11.CLOSE)
        elif self.http10:
            parts.append(http11.KEEP_ALIVE)
        parts.append(b"\r\n")
        self.response_started = True
        conn.write(b"".join(parts))

    def on_response_body(self, data: bytes) -> None:
        if self.response_chunked:
            self.conn.write(http11.chunk(data))
        else:
            self.conn.write(data)

    def on_response_done(self, up: UpstreamConnection) -> None:
        if self.finished:
            return
        if self.response_chunked:
            self.conn.write(http11.LAST_CHUNK)
        # Reusable only if the backend got the whole request; else it may still be reading it.
        up.finish(reusable=self.request_done and not self.discard)
        self.upstream = None
        self.done()

    def on_upstream_lost(self, up: UpstreamConnection, error: str) -> None:
        if self.finished:
            return
        self.upstream = None
        resolution = self.resolution
        assert resolution is not None
        if self.response_started:
            # Mid-body: the client must not take a cut response for a whole one.
            log.warning("route %s ordinal %d: %s mid-response", resolution.route.spec.name,
                        resolution.ordinal, error)
            self.conn.abort()
            return
        if (up.used and not up.got_bytes and not self.retried and not self.has_body
                and self.method in _RETRY_METHODS):
            # A pooled connection the backend had already closed: no request reached it.
            self.retried = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.send(resolution)
            return
        self.fail(ProxyError("upstream_error", f"ordinal {resolution.ordinal} of route "
                             f"'{resolution.route.spec.name}': {error}",
                             route=resolution.route.spec.name, ordinal=resolution.ordinal))

    def on_upstream_full(self) -> None:
        self.conn.block(_BLOCK_UPSTREAM)

    def on_upstream_drained(self) -> None:
        self.conn.unblock(_BLOCK_UPSTREAM)

    def flush(self) -> None:
        self.conn.flush()

    def on_timeout(self) -> None:
        self.timer = None
        if self.finished or self.response_started:
            return
        resolution = self.resolution
        assert resolution is not None
        spec = resolution.route.spec
        self.fail(ProxyError("upstream_timeout", f"ordinal {resolution.ordinal} of route "
                             f"'{spec.name}' did not answer within {spec.timeout_s:g}s",
                             route=spec.name, ordinal=resolution.ordinal))
        self.conn.flush()

    # --- endings --------------------------------------------------------------

    def fail(self, error: ProxyError) -> None:
        """Answer with an error (only before any response byte was sent)."""
        if self.finished:
            return
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        if not self.request_done:
            self.discard = True
            self.pending, self.pending_bytes = [], 0
            self.conn.unblock(_BLOCK_PENDING)
            if self.expect_continue or error.code == "body_too_large":
                self.close_after = True  # the client may or may not send the rest: start afresh
        if not self.keep_alive or self.conn.ctx.draining:
            self.close_after = True
        self.status = error.status
        ordinal = error.details.get("ordinal")
        conn = self.conn
        conn.write(render(error, close=self.close_after,
                          ordinal=ordinal if isinstance(ordinal, int) else None))
        self.done()
        conn.flush()  # may run from a task or timer, outside data_received

    def local(self, response: bytes) -> None:
        """Answer an introspection request."""
        if not self.request_done:
            self.discard = True
        self.status = int(response[9:12])
        if not self.keep_alive or self.conn.ctx.draining:
            self.close_after = True
            response = response.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        self.conn.write(response)
        self.done()

    def done(self) -> None:
        self.finished = True
        if not self.request_done:
            self.discard = True  # the rest of the body, if any, is read and dropped
            self.pending, self.pending_bytes = [], 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn = self.conn
        resolution = self.resolution
        stats = conn.ctx.stats
        if resolution is not None:
            stats.observe(resolution.route.spec.name, _ordinal_text(resolution.ordinal),
                          self.status, conn.loop.time() - self.started)
        else:
            name = self.state.spec.name if self.state is not None else "-"
            stats.observe(name, "", self.status, conn.loop.time() - self.started)
        conn.unblock(_BLOCK_PENDING | _BLOCK_UPSTREAM)
        conn.exchange_done(self)

    def abort(self) -> None:
        """The client went away: drop everything, never pool a half-used connection."""
        self.finished = True
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None


_ORDINAL_TEXT: list[str] = []


def _ordinal_text(ordinal: int) -> str:
    while len(_ORDINAL_TEXT) <= ordinal:
        _ORDINAL_TEXT.append(str(len(_ORDINAL_TEXT)))
    return _ORDINAL_TEXT[ordinal]


class ClientConnection(asyncio.Protocol):
    """One client socket: parses requests, queues exchanges, writes responses in order."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.parsing: Exchange | None = None
        self.out: list[bytes] = []
        self.blocked = 0
        self.write_paused = False
        self.closing = False
        #: Nothing more is parsed (after a protocol error or an upgrade request).
        self.ignore_input = False
        #: Bytes received while a head is incomplete (caps what httptools buffers).
        self.head_bytes = 0
        #: Bytes of the current request's header lines.
        self.header_bytes = 0
        self.in_head = False

    # --- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        transport.set_write_buffer_limits(high=256 * 1024)
        self.ctx.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.ignore_input:
            return
        settings = self.ctx.settings
        try:
            self.parser.feed_data(data)
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
            if self.head_bytes > settings.max_header_bytes + settings.max_request_line:
                self.protocol_error(ProxyError(
                    "headers_too_large",
                    f"request head is over {settings.max_header_bytes} bytes"))
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
        if self.queue:
            upstream = self.queue[0].upstream
            if upstream is not None and upstream.transport is not None:
                upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.queue:
            upstream = self.queue[0].upstream
            if upstream is not None and upstream.transport is not None:
                upstream.transport.resume_reading()

    # --- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        exchange = Exchange(self)
        self.parsing = exchange
        self.queue.append(exchange)
        self.in_head = True
        self.head_bytes = self.header_bytes = 0

    def on_url(self, url: bytes) -> None:
        exchange = self.parsing
        assert exchange is not None
        exchange.url += url
        if len(exchange.url) > self.ctx.settings.max_request_line:
            raise ProxyError("uri_too_long",
                             f"request target is over {self.ctx.settings.max_request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.parsing
        assert exchange is not None
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.ctx.settings.max_header_bytes:
            raise ProxyError("headers_too_large",
                             f"request headers are over {self.ctx.settings.max_header_bytes} bytes")
        lname = name.lower()
        if lname in http11.REQUEST_SPECIAL:
            if lname == b"content-length":
                exchange.content_length = value
            elif lname == b"transfer-encoding":
                exchange.chunked = b"chunked" in value.lower()
            elif lname == b"expect":
                exchange.expect_continue = value.lower() == b"100-continue"
            elif lname == b"connection":
                exchange.drop = exchange.drop | http11.connection_tokens(value)
            return
        exchange.headers.append((lname, name, value))

    def on_headers_complete(self) -> None:
        exchange = self.parsing
        assert exchange is not None
        self.in_head = False
        parser = self.parser
        exchange.method = parser.get_method()
        exchange.keep_alive = parser.should_keep_alive()
        exchange.http10 = parser.get_http_version() == "1.0"
        exchange.headers_done = True
        if parser.should_upgrade():
            exchange.keep_alive = False  # no tunnels: answer this one request, then close
        if self.queue and self.queue[0] is exchange:
            exchange.start()

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is not None:
            exchange.body(body)

    def on_message_complete(self) -> None:
        exchange, self.parsing = self.parsing, None
        if exchange is not None:
            exchange.complete()

    # --- used by exchanges --------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> None:
        out = self.out
        if out and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
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
            queue.popleft()
        if exchange.close_after:
            self.close_after_flush()
            return
        if queue and queue[0].headers_done and not queue[0].finished:
            queue[0].start()
        elif not queue and self.ctx.draining:
            self.close_after_flush()

    def close_after_flush(self) -> None:
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
        error_response = render(error, close=True)
        self.parsing = None
        self.in_head = False
        if not self.queue:
            self.write(error_response)
            self.close_after_flush()
        else:
            # Let earlier exchanges finish; then the last one closes the connection.
            self.queue[-1].keep_alive = False
            self.queue[-1].close_after = True
            self.ignore_input = True

    def abort(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.abort()

    def drain(self) -> None:
        """Graceful shutdown: close now if idle, else after the current response."""
        if not self.queue and self.parsing is None:
            self.close_after_flush()


__all__ = ["ClientConnection", "Context", "Exchange", "json_response"]
