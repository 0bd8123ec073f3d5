"""The HTTP/1.1 front end's timeouts, as sweeps over its connections (app.py runs them).

Design rules:
- Timeouts cost the request path no timer: ``expire`` (every 50 ms, the backend
  side) and ``close_idle`` (the client side) read per-connection deadlines,
  flags and counters that the request path sets with a store.
- A request waiting on its backend is the backend's time (``expire``); a
  connection waiting on its client is the client's (``close_idle``).
"""

from __future__ import annotations

from typing import cast

from sidecar.errors import ProxyError
from sidecar.exchange import Exchange
from sidecar.h1base import BLOCK_UPSTREAM, Context
from sidecar.proxy import WAIT_IDLE, WAIT_NONE, ClientConnection


def close_idle(ctx: Context, sweeps: int, head_sweeps: int, body_sweeps: int,
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
    for rejected in list(ctx.rejected):
        conn = cast(ClientConnection, rejected)
        conn.idle_sweeps += 1
        if conn.idle_sweeps >= 2:
            conn.abort()
    for held in [c for c in ctx.buffering if not c.holds_full_buffer()]:
        ctx.release(held)  # a json: body that was read or dropped
    for client in list(ctx.connections):
        conn = cast(ClientConnection, client)
        if not conn.blocked and (conn.in_head or (conn.idle_sweeps == 0 and
                                                  conn.parsing is None and not conn.queue)):
            conn.head_sweeps += 1
            if conn.head_sweeps >= head_sweeps:
                conn.protocol_error(ProxyError(
                    "request_timeout",
                    f"the request head did not arrive within {ctx.head_timeout:g}s "
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


def expire(ctx: Context, now: float) -> None:
    """Time out every exchange whose backend is past its deadline (``shard.io/timeout``).

    A sweep over the connections, not a registry of exchanges in flight: only
    the head of a connection's queue waits on a backend, and the sweep (every
    50 ms) costs less than adding and removing every request. The request path
    sets a deadline for the response head only; the sweep sets the others
    from flags, so a body read costs a store instead of a clock read.
    """
    late: list[Exchange] = []
    for client in ctx.connections:
        conn = cast(ClientConnection, client)
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
