"""The HTTP/1.1 forwarding state machine: one request's routing and sending.

Design rules:
- The decision is ``routing.route_h1``'s (``route_body`` once a ``json:`` body is
  read, ``owner`` again after a wait): a pure function of the head and the map.
  This class acts on it: send, wait, read the body, answer, or introspect.
- The hot path (a pooled connection is idle, the key is in a header) is fully
  synchronous: no task, no future. Tasks appear only to connect, to wait for a
  shard (``wait:<ms>``), or to read a whole body for a ``json:`` key.
- A request for ordinal i goes to ordinal i's pool or nowhere. The only retry
  is a new connection to the same ordinal when the connection could not be
  made, or when a pooled keep-alive connection was found closed before any
  answer to a safe request without a body (GET, HEAD, OPTIONS; ``h1relay``).
- Slot mode (``slot_exchange``) fences what is sent and replays after a 421.
"""

from __future__ import annotations

import asyncio
from typing import Final

from mypy_extensions import mypyc_attr

from sidecar import http11, slot_exchange
from sidecar.errors import ProxyError
from sidecar.h1base import BLOCK_PENDING
from sidecar.h1relay import Relay
from sidecar.introspect import introspect
from sidecar.routing import (
    WAITABLE,
    Introspect,
    NeedBody,
    Refusal,
    Routed,
    owner,
    route_body,
    route_h1,
)
from sidecar.shardmap import RouteState, Shard
from sidecar.upstream import Pool, UpstreamConnection

# Final, so that the compiled module reads them as constants, not from its globals dict.
_HEAD: Final = b"HEAD"
_SP_HTTP11_CRLF: Final = b" HTTP/1.1\r\n"
#: Bytes of request body held for a request not yet connected before reading pauses.
_PENDING_LIMIT: Final = 256 * 1024


@mypyc_attr(free_list_len=1)  # compiled: the next request's exchange reuses the memory
class Exchange(Relay):
    """One request and its response (``h1relay.Relay`` relays the response).

    Compiled by mypyc (setup.py) into a native class, as its base is.
    """

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
        decision = route_h1(self.url, self.head, conn.ctx.map.routes, self.http10)
        if isinstance(decision, Routed):  # routed(), inline: this runs for every request
            state = decision.state
            self.target = decision.upstream_path
            if state.slotted:
                slot_exchange.route(self, decision)
            else:
                self.send(state, decision.ordinal, decision.shard)
        elif isinstance(decision, Refusal):
            self.refused(decision)
        elif isinstance(decision, NeedBody):
            self.state = decision.state
            self.target = decision.upstream_path
            self.start_json()
        else:
            assert isinstance(decision, Introspect)
            self.local(introspect(conn.ctx.map, self.method, decision.rest, decision.query))

    def routed(self, decision: Routed) -> None:
        state = decision.state
        self.target = decision.upstream_path
        if state.slotted:
            slot_exchange.route(self, decision)
            return
        self.send(state, decision.ordinal, decision.shard)

    def refused(self, decision: Refusal) -> None:
        """Answer ``decision``, or wait (``wait:<ms>``) for its key's owner."""
        state = decision.state
        if state is None:
            self.fail(decision.error)
            return
        self.state = state
        self.target = decision.upstream_path
        key = decision.key
        if key is None:
            self.fail(decision.error)
        elif state.slotted:
            slot_exchange.route(self, decision)
        elif state.spec.wait_ms and decision.error.code in WAITABLE:
            self.task = self.conn.loop.create_task(self.wait_for_shard(state.spec.name, key))
        else:
            self.fail(decision.error)

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
        state = self.state
        assert state is not None
        body, self.pending, self.pending_bytes = b"".join(self.pending), [], 0
        decision = route_body(NeedBody(state, self.target, True), body)
        if isinstance(decision, Refusal) and decision.key is None:
            self.fail(decision.error)
            return
        self.pending, self.pending_bytes = [body], len(body)
        if isinstance(decision, Routed):
            self.routed(decision)
        elif isinstance(decision, Refusal):
            self.refused(decision)

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
            decision = owner(state, key, self.target)
            if isinstance(decision, Refusal):
                err = decision.error
                remaining = deadline - now()
                if err.code not in WAITABLE or decision.key is None:  # final: answer now
                    self.fail(err)
                    return
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
            assert isinstance(decision, Routed)
            self.task = None
            self.send(state, decision.ordinal, decision.shard)
            return

    def misdirected(self, up: UpstreamConnection) -> None:
        slot_exchange.misdirected(self, up)

    def send(self, state: RouteState, ordinal: int, shard: Shard) -> None:
        """Forward to the resolved ordinal: an idle pooled connection now, else connect."""
        self.state, self.ordinal, self.shard = state, ordinal, shard
        pools = self.conn.ctx.pools
        # Pools.pool's common case inline: the state the last request was sent with.
        pool = pools.last_pools.get(ordinal) if state is pools.last else None
        if pool is None:
            address = shard.address
            assert address is not None
            pool = pools.pool(state, ordinal, address)
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
        if len(self.drop):  # len(): compiled, a field read; truth is a generic call
            head = _without(head, self.drop)
        head[0] = self.method + b" " + self.target + _SP_HTTP11_CRLF  # cheaper than a join
        fence = self.fence
        head.append(fence if len(fence) else shard.upstream_header)
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
                not self.finished:  # json_mode: started, so the head of the queue until done
            self.route_json()


def _without(head: list[bytes], drop: frozenset[bytes]) -> list[bytes]:
    """The head without the headers that the Connection header named."""
    kept = [head[0]]
    for i in range(1, len(head) - 3, 4):
        if head[i].lower() not in drop:
            kept += head[i:i + 4]
    return kept


