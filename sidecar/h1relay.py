"""An exchange's state, its response side and its endings: everything of one request
but the routing and the sending (``exchange.Exchange`` adds those).

Design rules:
- An exchange is owned by its client connection and is started only at the head
  of that connection's queue, so responses go out in request order.
- The backend's response is relayed as it comes: its head rebuilt for the client
  (framing re-made, ``X-Shard-Ordinal`` added, hop-by-hop headers dropped by the
  parser), its body chunked when the backend's had no length and the client
  speaks HTTP/1.1; a response that cannot complete is cut so the client sees it.
- It reports to the client connection through ``write``/``flush`` and the
  read-blocking bits; it never touches the client transport itself.
- The request side's ``send`` (a retry on a stale pooled connection) and slot
  mode's 421 (``misdirected``) are declared here and done by ``Exchange``:
  compiled, those calls stay native without this module importing that one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from sidecar import http11
from sidecar.errors import ProxyError, render
from sidecar.h1base import BLOCK_PENDING, BLOCK_UPSTREAM, ClientBase
from sidecar.shardmap import RouteState, Shard
from sidecar.upstream import Listener, Pool, UpstreamConnection

log = logging.getLogger("shardmesh.sidecar.proxy")

# Final, so that the compiled module reads them as constants, not from its globals dict.
_HEAD: Final = b"HEAD"
_RETRY_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS"})


class Relay(Listener):
    """An exchange's fields, its response side and its endings (``exchange.Exchange``
    is the whole exchange).

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

    def __init__(self, conn: ClientBase) -> None:
        self.conn = conn
        #: The upstream head as it is built: [request line, name, ": ", value, CRLF, ...].
        self.head: list[bytes] = [b""]
        self.pending: list[bytes] = []
        self.drop = http11.NO_TOKENS

    @property
    def has_body(self) -> bool:
        return self.chunked or (self.content_length is not None and
                                self.content_length.strip() not in (b"0", b""))

    # --- done by Exchange -------------------------------------------------------

    def send(self, state: RouteState, ordinal: int, shard: Shard) -> None:
        """Forward to the resolved ordinal (again, after a stale pooled connection)."""
        raise NotImplementedError

    def misdirected(self, up: UpstreamConnection) -> None:
        """Slot mode: the backend answered 421; route again (slot_exchange)."""
        raise NotImplementedError

    # --- response side (upstream.Listener) ----------------------------------

    def on_response_head(self, up: UpstreamConnection) -> None:
        conn = self.conn
        self.deadline = 0.0
        self.status = status = up.status
        if len(self.fence):  # compiled, cheaper than the truth of bytes (a generic call)
            if status == 421:
                self.misdirected(up)  # never relayed: resolve again
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
        conn.exchange_done(self, self.close_after)

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

