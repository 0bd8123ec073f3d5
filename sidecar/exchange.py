"""One request and its response: routing, forwarding, and every way it can end.

Design rules:
- An ``Exchange`` is owned by its ``ClientConnection`` and is started only at
  the head of that connection's queue, so responses go out in request order.
- The hot path (a pooled connection is idle, the key is in a header) is fully
  synchronous: no task, no future. Tasks appear only to connect, to wait for a
  shard (``wait:<ms>``), or to read a whole body for a ``json:`` key.
- A request for ordinal i goes to ordinal i's pool or nowhere. The only retry
  is a new connection to the same ordinal when the connection could not be
  made, or when a pooled keep-alive connection was found closed before any
  answer to a safe request without a body (GET, HEAD, OPTIONS).
- It reports to the client connection through ``write``/``flush`` and the
  read-blocking bits below; it never touches the client transport itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from sidecar import http11, keys, slot_exchange
from sidecar.errors import ProxyError, render
from sidecar.introspect import introspect
from sidecar.shardmap import RouteState, Shard, resolve
from sidecar.upstream import Pool, UpstreamConnection

if TYPE_CHECKING:
    from sidecar.proxy import ClientConnection

log = logging.getLogger("shardmesh.sidecar.proxy")

# Final, so that the compiled module reads them as constants, not from its globals dict.
_HEAD: Final = b"HEAD"
_SP_HTTP11_CRLF: Final = b" HTTP/1.1\r\n"
_RETRY_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS"})
#: Bytes of request body held for a request not yet connected before reading pauses.
_PENDING_LIMIT: Final = 256 * 1024
# Reasons reading from a client is paused (a bit set, resumed when all clear).
BLOCK_PENDING: Final = 1
BLOCK_UPSTREAM: Final = 2
BLOCK_PIPELINE: Final = 4


class Exchange:
    """One request and its response.

    Compiled by mypyc (setup.py) into a native class: the class-level defaults
    below become plain C fields, set when the exchange is made.
    """

    method = b""
    url = b""
    content_length: bytes | None = None
    chunked = False
    #: The Transfer-Encoding lines, comma-joined (ClientConnection checks them).
    transfer_encoding: bytes | None = None
    expect_continue = False
    #: An Expect other than 100-continue, which no one here can meet (417).
    expect_other: bytes | None = None
    keep_alive = True
    http10 = False
    #: A Connection-like header was seen (see ClientConnection.on_headers_complete).
    hop_headers = False
    headers_done = False
    request_done = False
    pending_bytes = 0
    discard = False
    upstream: UpstreamConnection | None = None
    pool: Pool | None = None
    state: RouteState | None = None
    ordinal = -1
    shard: Shard | None = None
    task: asyncio.Task[None] | None = None
    #: When the current wait on the backend ends (Context.expire): its response head
    #: (the clock starts once the whole request was handed to it), its next body
    #: bytes, or its reading of the upload. 0 when none is timed.
    deadline = 0.0
    started = 0.0
    status = 0
    response_started = False
    response_chunked = False
    finished = False
    json_mode = False
    close_after = False
    #: Header names the request's Connection header listed (dropped upstream).
    drop: frozenset[bytes]
    retried = False
    began = False
    target = b""
    head_base = 0
    # Slot mode (slot_exchange.py): the upstream fencing lines (b"" in default mode),
    # the key (to resolve again after a 421) and the body sent so far, for a replay
    # (None: not kept, or over the bound and streamed).
    fence = b""
    slot_key = ""
    replay: list[bytes] | None = None
    replay_bytes = 0

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        #: The upstream head as it is built: [request line, name, ": ", value, CRLF, ...].
        self.head: list[bytes] = [b""]
        self.pending: list[bytes] = []
        self.drop = http11.NO_TOKENS

    @property
    def has_body(self) -> bool:
        return self.chunked or (self.content_length is not None and
                                self.content_length.strip() not in (b"0", b""))

    # --- request side -------------------------------------------------------

    def start(self) -> None:
        """Route the request (called once, when it is the head of the queue)."""
        conn = self.conn
        self.began = True
        self.started = conn.now()
        if self.expect_other is not None:
            expect = self.expect_other.decode("latin-1")
            self.fail(ProxyError("expectation_failed", f"unsupported Expect '{expect}': "
                                 "only 100-continue is supported"))
            return
        parts = http11.split_target(self.url)
        if parts is None:
            self.fail(ProxyError("bad_request", f"request target '{self.url.decode('latin-1')}' "
                                 "is not /<route>/<path>"))
            return
        name, self.target, rest, query = parts
        state = conn.ctx.map.routes.get(name)
        kind = state.key_kind if state is not None else ""
        # Host and the key header in one pass, checked before anything goes upstream.
        if kind == "header":
            assert state is not None
            hosts, host, value, other = http11.scan_head(self.head, state.key_header,
                                                         state.key_spelling)
        else:
            hosts, host, value, other = http11.scan_head(self.head, b"", b"")
        if hosts != 1 or 0x2C in host:  # check_host's common case inline: one Host, no list
            error = http11.check_host(hosts, host, self.http10)
            if error is not None:
                self.fail(error)
                return
        if state is None:
            self.no_route(name, rest, query)
            return
        self.state = state
        source = state.key
        if kind == "header":
            try:
                if other is not None:
                    raise keys.ambiguous(source, value, other)
                key = keys.from_header(value, source)
            except ProxyError as err:
                self.fail(err)
                return
        elif kind == "json":
            self.start_json()
            return
        else:
            try:
                key = keys.from_query(query, source) if kind == "query" else \
                    keys.from_path(rest, source)
            except ProxyError as err:
                self.fail(err)
                return
        self.route_key(state, key)

    def no_route(self, name: bytes, rest: bytes, query: bytes) -> None:
        conn = self.conn
        if name == b"_shard":
            self.local(introspect(conn.ctx.map, self.method, rest, query))
            return
        route = name.decode("latin-1")
        known = ", ".join(sorted(r.decode() for r in conn.ctx.map.routes)) or "none"
        self.fail(ProxyError("unknown_route", f"no route '{route}' (known: {known})", route=route))

    def start_json(self) -> None:
        conn = self.conn
        self.json_mode = True
        conn.unblock(BLOCK_PENDING)  # a json: key reads up to max_json_body first
        self.check_json_size()
        if self.finished:
            return
        if self.expect_continue and not self.request_done:
            conn.write(http11.CONTINUE)
        if self.request_done:
            self.route_json()

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
        if state.slotted:
            slot_exchange.route(self, state, key)
            return
        try:
            ordinal, shard = resolve(state, key)
        except ProxyError as err:
            if state.spec.wait_ms and err.code in ("shard_unavailable", "shard_map_not_ready"):
                self.task = self.conn.loop.create_task(self.wait_for_shard(state.spec.name, key))
                return
            self.fail(err)
            return
        self.send(state, ordinal, shard)

    async def wait_for_shard(self, route: str, key: str) -> None:
        """``wait:<ms>``: re-resolve on every map change until ready or the wait is over."""
        ctx = self.conn.ctx
        now = self.conn.now
        assert self.state is not None
        deadline = self.started + self.state.spec.wait_ms / 1000
        while True:
            state = ctx.map.get(route)
            if state is None:
                self.fail(ProxyError("unknown_route", f"route '{route}' was removed", route=route))
                return
            try:
                ordinal, shard = resolve(state, key)
            except ProxyError as err:
                remaining = deadline - now()
                if remaining <= 0:
                    waited = f"{err.message} (waited {state.spec.wait_ms} ms)"
                    self.fail(ProxyError(err.code, waited, **err.details))
                    return
                try:
                    async with asyncio.timeout(remaining):
                        await ctx.map.changed(route)
                except TimeoutError:
                    pass
                continue
            self.task = None
            self.send(state, ordinal, shard)
            return

    def send(self, state: RouteState, ordinal: int, shard: Shard) -> None:
        """Forward to the resolved ordinal: an idle pooled connection now, else connect."""
        self.state, self.ordinal, self.shard = state, ordinal, shard
        pool = state.pools.get(ordinal)
        if pool is None:
            assert shard.address is not None
            pool = state.pools[ordinal] = self.conn.ctx.pools.get(state.name, ordinal,
                                                                  shard.address)
        self.pool = pool
        idle = pool.idle
        while idle:  # Pool.take_idle, inline: this runs for every request
            upstream = idle.pop()
            if not upstream.closed:
                self.attach(upstream)
                return
        self.task = self.conn.loop.create_task(self.connect_and_send(pool))

    async def connect_and_send(self, pool: Pool) -> None:
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
        state = self.state
        shard = self.shard
        assert state is not None and shard is not None
        conn = self.conn
        self.upstream = upstream
        head = self.head
        self.head_base = len(head)
        if self.drop:
            head = _without(head, self.drop)
        head[0] = self.method + b" " + self.target + _SP_HTTP11_CRLF  # cheaper than a join
        fence = self.fence
        head.append(fence if fence else shard.upstream_header)
        if self.chunked:
            head.append(http11.CHUNKED)
        elif self.content_length is not None:
            head.append(b"Content-Length: ")
            head.append(self.content_length)
            head.append(b"\r\n")
        head.append(b"\r\n")
        if self.pending:
            if self.chunked:
                head += [http11.chunk(p) for p in self.pending]
            else:
                head += self.pending
            if self.replay is not None:
                slot_exchange.keep(self, self.pending)
            self.pending, self.pending_bytes = [], 0
            conn.unblock(BLOCK_PENDING)
        if self.request_done and self.chunked:
            head.append(http11.LAST_CHUNK)
        if self.expect_continue and not self.request_done and not self.json_mode:
            conn.write(http11.CONTINUE)
            conn.flush()
        if self.request_done:  # else complete() starts the clock: an upload is not the backend's
            self.deadline = conn.now() + state.timeout_s
        upstream.start(self, b"".join(head), self.method == _HEAD)
        if conn.write_paused:
            upstream.set_reading(False)

    def body(self, data: bytes) -> None:
        """A piece of the request body from the client."""
        if self.discard:
            return
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.write(http11.chunk(data) if self.chunked else data)
            if self.replay is not None:
                slot_exchange.keep(self, [data])
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.json_mode:
            self.check_json_size()
            if self.pending_bytes > _PENDING_LIMIT and not self.finished:
                conn = self.conn
                conn.ctx.hold(conn, conn.ctx.settings.max_json_body + _PENDING_LIMIT)
        elif self.pending_bytes > _PENDING_LIMIT:
            self.conn.block(BLOCK_PENDING)

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
            state = self.state
            if not self.response_started and state is not None:
                self.deadline = self.conn.now() + state.timeout_s  # time to first byte
        elif self.json_mode and self.task is None and self.headers_done and \
                self.conn.queue and self.conn.queue[0] is self:
            self.route_json()

    # --- response side (UpstreamListener) ------------------------------------

    def on_response_head(self, up: UpstreamConnection) -> None:
        conn = self.conn
        self.deadline = 0.0
        self.status = status = up.status
        if self.fence:
            if status == 421:
                slot_exchange.misdirected(self, up)  # never relayed: resolve again
                return
            self.replay = None  # answered: nothing left to replay
        head = up.head  # its first item is already the status line
        shard = self.shard
        assert shard is not None
        head.append(shard.response_header)
        if up.content_length is not None:
            head.append(b"Content-Length: ")
            head.append(up.content_length)
            head.append(b"\r\n")
        elif self.method != _HEAD and status not in http11.NO_BODY_STATUS:
            if self.http10:
                self.close_after = True  # HTTP/1.0 has no chunked: the close ends the body
            else:
                self.response_chunked = True
                head.append(http11.CHUNKED)
        if self.close_after or not self.keep_alive or conn.ctx.draining:
            self.close_after = True
            head.append(http11.CLOSE)
        elif self.http10:
            head.append(http11.KEEP_ALIVE)
        head.append(b"\r\n")
        self.response_started = True
        if conn.out:
            conn.out += head
        else:
            conn.out = head  # the upstream starts a new list for its next response

    def on_response_body(self, data: bytes) -> None:
        if self.response_chunked:
            self.conn.out.append(http11.chunk(data))
        else:
            self.conn.out.append(data)

    def on_response_done(self, up: UpstreamConnection) -> None:
        if self.finished:
            return
        conn = self.conn
        if self.response_chunked:
            conn.out.append(http11.LAST_CHUNK)
        conn.flush()  # the client gets its answer before any bookkeeping
        # Reusable only if the backend got the whole request; else it may still be reading it.
        up.finish(reusable=self.request_done and not self.discard)
        self.upstream = None
        self.done()

    def on_upstream_lost(self, up: UpstreamConnection, error: str) -> None:
        if self.finished:
            return
        self.upstream = None
        state = self.state
        assert state is not None and self.shard is not None
        if self.response_started:
            log.warning("route %s ordinal %d: %s mid-response", state.spec.name, self.ordinal,
                        error)
            self.cut(self.response_chunked or up.content_length is not None)
            return
        if (up.used and not up.got_bytes and not self.retried and not self.has_body
                and self.method in _RETRY_METHODS):
            # A pooled connection the backend had already closed: no request reached it.
            self.retried = True
            self.deadline = 0.0
            del self.head[self.head_base:]
            self.send(state, self.ordinal, self.shard)
            return
        self.fail(ProxyError("upstream_error", f"ordinal {self.ordinal} of route "
                             f"'{state.spec.name}': {error}", route=state.spec.name,
                             ordinal=self.ordinal))

    def on_upstream_full(self) -> None:
        self.conn.block(BLOCK_UPSTREAM)

    def on_upstream_drained(self) -> None:
        if not self.request_done and not self.response_started:
            self.deadline = 0.0  # the backend reads the upload again (Context.expire)
        self.conn.unblock(BLOCK_UPSTREAM)

    def on_timeout(self) -> None:
        """The backend kept us waiting ``shard.io/timeout``: for its response head,
        for its next response bytes, or to read more of the upload."""
        if self.finished:
            return
        state = self.state
        assert state is not None
        spec = state.spec
        where = f"ordinal {self.ordinal} of route '{spec.name}'"
        if self.response_started:
            up = self.upstream
            log.warning("%s sent no response bytes for %gs mid-response: cut", where,
                        spec.timeout_s)
            self.cut(self.response_chunked or (up is not None and up.content_length is not None))
            return
        what = "answer" if self.request_done else "read more of the request body"
        self.fail(ProxyError("upstream_timeout", f"{where} did not {what} within "
                             f"{spec.timeout_s:g}s", route=spec.name, ordinal=self.ordinal))

    def flush(self) -> None:
        """The client connection's flush (the upstream calls it after every read)."""
        self.conn.flush()

    # --- endings --------------------------------------------------------------

    def fail(self, error: ProxyError) -> None:
        """Answer with an error, or cut the response if it has begun."""
        if self.finished:
            return
        if self.response_started:
            up = self.upstream
            self.cut(self.response_chunked or (up is not None and up.content_length is not None))
            return
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        if not self.request_done:
            self.discard = True
            self.pending, self.pending_bytes = [], 0
            self.conn.unblock(BLOCK_PENDING)
            if self.expect_continue or error.code in ("body_too_large", "expectation_failed"):
                self.close_after = True  # the client may or may not send the rest: start afresh
        if not self.keep_alive or self.conn.ctx.draining:
            self.close_after = True
        self.status = error.status
        ordinal = error.details.get("ordinal")
        if isinstance(ordinal, int):
            self.ordinal = ordinal  # so a 503 is counted against the shard that is down
        else:
            ordinal = None
        conn = self.conn
        conn.write(render(error, close=self.close_after, ordinal=ordinal))
        self.done()
        conn.flush()  # may run from a task or timer, outside data_received

    def local(self, response: bytes) -> None:
        """Answer an introspection request."""
        self.status = int(response[9:12])
        if not self.keep_alive or self.conn.ctx.draining:
            self.close_after = True
            response = response.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        self.conn.write(response)
        self.done()

    def done(self) -> None:
        self.finished = True
        conn = self.conn
        ctx = conn.ctx
        self.deadline = 0.0
        if not self.request_done:
            self.discard = True  # the rest of the body, if any, is read and dropped
            self.pending, self.pending_bytes = [], 0
        pool = self.pool
        if pool is not None and pool.ordinal == self.ordinal:
            slot = pool.slot
        else:  # answered without a pool (no route, no key, shard down)
            state = self.state
            ordinal = str(self.ordinal) if self.ordinal >= 0 else ""
            slot = ctx.stats.slot(state.name if state is not None else "-", ordinal)
        slot.observe(self.status, conn.now() - self.started)
        if conn.blocked:
            conn.unblock(BLOCK_PENDING | BLOCK_UPSTREAM)
        conn.exchange_done(self)

    def cut(self, framed: bool) -> None:
        """End a response that has begun without completing it: the client must see
        the truncation. What was read goes out, then a close comes before the last
        chunk or the Content-Length is reached; a body delimited by the close itself
        (an HTTP/1.0 client) would look whole that way, so it ends with a reset."""
        conn = self.conn
        self.abort()
        if framed:
            conn.close_after_flush()
        else:
            conn.abort()

    def abort(self) -> None:
        """The client went away: drop everything, never pool a half-used connection."""
        self.finished = True
        self.deadline = 0.0
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None


def _without(head: list[bytes], drop: frozenset[bytes]) -> list[bytes]:
    """The head without the headers that the Connection header named."""
    kept = [head[0]]
    for i in range(1, len(head) - 3, 4):
        if head[i].lower() not in drop:
            kept += head[i:i + 4]
    return kept


