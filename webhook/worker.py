"""The gunicorn worker class: gevent, with a turn per request, taken in order.

Why gevent: a review is a few hundred microseconds of pure Python, so what
costs is the server around it. gunicorn's ``gthread`` worker hands every
request from its poller thread to a pool thread and back (two thread switches
and GIL hand-overs per review); a greenlet per connection does not, and it
measured about a third less CPU per review (bench/webhook.py).

Why a turn per request: gevent only switches greenlets when one would block.
On a busy keep-alive connection the next review is often already in the
socket when the previous answer has gone out, so that greenlet never blocks
and the other connections wait behind it (p99 above 100 ms at c=16 with a
p50 of 1 ms). So after each request a connection waits until the loop is idle
(every ready socket served) before it reads its next one.

Why in order: ``gevent.idle()`` gives each waiter its own libev idle watcher,
and libev runs pending watchers last-in first-out, so the order of the
connections reverses on every pass (A B C D, then D C B A): a connection
served first in one pass is served last in the next and waits two passes,
while the last one waits almost none. ``Turns`` keeps one watcher and a FIFO
queue, so every connection waits one pass. On the benchmark at c=16 that took
p99 from about 2.2x p50 to about 1.8x (one worker alone: 1.1x).

Why the worker does the TLS handshake: gevent's server does it, with no time
limit, in the connection's greenlet before gunicorn sees the connection, and
the greenlet takes one of the worker's ``worker_connections`` (1000) slots. So
connections that never send a ClientHello filled both workers and every review
timed out for as long as they were held, and each one that gave up logged a
20-line traceback. Here the handshake is bounded in time
(``handshake_timeout_s``) and in number (``max_handshakes``, the oldest giving
way to a new one, since the API server's connection is the newest), and an
abort is one JSON line, at most one a second per reason (``logs.Throttle``).
After the handshake, gunicorn bounds the wait for a request head (its
``keepalive``, 30 s); the body and the answer get ``request_timeout_s``, as a
trickled body would otherwise hold its slot for ever.

Why idle connections are capped: a client that completes handshakes and then
sends nothing holds a slot for the whole keepalive, so about 35 handshakes a
second would keep a worker's 1000 slots full. ``IdleConnections`` lets at most
``max_idle_connections`` wait for a request at once; a new one closes the one
that has waited longest, exactly as if its keepalive had run out (the API
server, whose connection is the newest or busy, reconnects if it was one).
"""

from __future__ import annotations

import logging
import ssl
from collections import OrderedDict, deque
from typing import Any

from gevent import Timeout, getcurrent
from gevent.hub import Waiter, get_hub
from gunicorn.workers.ggevent import GeventWorker

from sidecar.annotations import clip
from webhook.logs import Throttle
from webhook.settings import Settings
from webhook.tls import abort_reason


class Turns:
    """Greenlets waiting for the loop to be idle, resumed in the order they came."""

    def __init__(self) -> None:
        self._queue: deque[Waiter] = deque()
        self._watcher: Any = None  # the hub's loop exists only in the worker

    def wait(self) -> None:
        hub = get_hub()
        if self._watcher is None:
            self._watcher = hub.loop.idle()
        waiter = Waiter(hub)
        self._queue.append(waiter)
        if not self._watcher.active:
            self._watcher.start(self._release)
        # A greenlet killed while waiting leaves its waiter behind; switching
        # a waiter whose greenlet has gone only stores the value.
        waiter.get()

    def _release(self) -> None:
        self._watcher.stop()
        # Those that come back while this batch runs wait for the next idle pass.
        batch, self._queue = self._queue, deque()
        for waiter in batch:
            waiter.switch(None)


class Evicted(Exception):
    """Thrown into a handshake that gives way to a newer one."""


class _Pending:
    __slots__ = ("greenlet", "active")

    def __init__(self, greenlet: Any) -> None:
        self.greenlet, self.active = greenlet, True


def _evict(pending: _Pending) -> None:
    # Run by the hub, so the greenlet is parked; if its handshake finished
    # since it was picked, it keeps its connection.
    if pending.active:
        pending.greenlet.throw(Evicted())


class Handshakes:
    """The TLS handshakes in progress in one worker: each one bounded in time, and
    at most ``limit`` at once, the oldest aborted to make room for a new one."""

    def __init__(self, timeout: float, limit: int, log: Throttle) -> None:
        self.timeout, self.limit, self.log = timeout, limit, log
        self._pending: OrderedDict[_Pending, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def complete(self, sock: ssl.SSLSocket, peer: Any) -> bool:
        """Do ``sock``'s handshake; False (logged) if it was aborted or failed."""
        while len(self._pending) >= self.limit:
            oldest, _ = self._pending.popitem(last=False)
            get_hub().loop.run_callback(_evict, oldest)
        pending = _Pending(getcurrent())
        self._pending[pending] = None
        timer = Timeout.start_new(self.timeout)
        try:
            sock.do_handshake()
            return True
        except Timeout as err:
            if err is not timer:
                raise
            reason, detail = "timeout", f"no handshake within {self.timeout:g}s"
        except Evicted:
            reason, detail = "evicted", f"{self.limit} newer handshakes were waiting"
        except OSError as err:  # ssl.SSLError is one
            reason, detail = abort_reason(err), clip(str(err))
        finally:
            timer.close()
            pending.active = False
            self._pending.pop(pending, None)
        self.log.event(f"handshake {reason}", "TLS handshake aborted", logging.WARNING,
                       reason=reason, error=detail, peer=_host(peer))
        return False


class _IdleWait:
    """gunicorn's wait for a request head (its ``timeout_ctx``), registered so that
    it can be ended early: the greenlet gets its own silent Timeout thrown in,
    which ends the wait as the keepalive running out would (no request: close)."""

    __slots__ = ("owner", "timeout", "greenlet", "active")

    def __init__(self, owner: IdleConnections, seconds: float) -> None:
        self.owner, self.greenlet, self.active = owner, getcurrent(), False
        self.timeout = Timeout(seconds, False)

    def __enter__(self) -> _IdleWait:
        self.timeout.__enter__()
        self.active = True
        self.owner.enter(self)
        return self

    def __exit__(self, typ: Any, value: Any, tb: Any) -> bool:
        self.active = False
        self.owner.leave(self)
        return bool(self.timeout.__exit__(typ, value, tb))


def _end_wait(wait: _IdleWait) -> None:
    # Run by the hub, so the greenlet is parked; if its request came since it was
    # picked, it keeps its connection.
    if wait.active:
        wait.greenlet.throw(wait.timeout)


class IdleConnections:
    """The connections of one worker waiting for a request, oldest first; at most
    ``limit``, the one that waited longest closed to make room for a new one."""

    def __init__(self, keepalive: float, limit: int, log: Throttle) -> None:
        self.keepalive, self.limit, self.log = keepalive, limit, log
        self._waiting: OrderedDict[_IdleWait, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self) -> _IdleWait:
        return _IdleWait(self, self.keepalive)

    def enter(self, wait: _IdleWait) -> None:
        while len(self._waiting) >= self.limit:
            oldest, _ = self._waiting.popitem(last=False)
            get_hub().loop.run_callback(_end_wait, oldest)
            self.log.event("idle evicted", "idle connection closed", logging.WARNING,
                           reason="evicted",
                           error=f"{self.limit} connections were already waiting for a request")
        self._waiting[wait] = None

    def leave(self, wait: _IdleWait) -> None:
        self._waiting.pop(wait, None)


def _host(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


class FairGeventWorker(GeventWorker):  # type: ignore[misc]
    def init_process(self) -> None:
        settings = getattr(self.app, "settings", None)
        if not isinstance(settings, Settings):
            settings = Settings()
        self.turns = Turns()
        self.slow = Throttle()
        self.handshakes = Handshakes(settings.handshake_timeout_s, settings.max_handshakes,
                                     self.slow)
        self.request_timeout = settings.request_timeout_s
        self.idle = IdleConnections(float(self.cfg.keepalive), settings.max_idle_connections,
                                    self.slow)
        super().init_process()

    def run(self) -> None:
        try:
            super().run()
        finally:  # graceful stop or quick exit: the held-back log lines still go out
            self.slow.close()

    def timeout_ctx(self) -> _IdleWait:
        # gunicorn's keepalive loop waits for each request head inside this.
        return self.idle.wait()

    def notify(self) -> None:
        super().notify()  # once a second: the end of a burst gets its line too
        self.slow.flush()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        # gevent's server only wrapped the socket (webhook.tls.FollowingContext
        # turns its handshake off); the handshake is done here, within bounds.
        if isinstance(client, ssl.SSLSocket):
            client.setblocking(True)  # gevent's kind: waits yield to the hub
            if not self.handshakes.complete(client, addr):
                client.close()
                return
        super().handle(listener, client, addr)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        timer = Timeout.start_new(self.request_timeout)
        try:
            result = super().handle_request(listener_name, req, sock, addr)
        except Timeout as err:
            if err is not timer:
                raise
            self.slow.event("request timeout", "request timed out", logging.WARNING,
                            error=f"not read and answered within {self.request_timeout:g}s",
                            path=clip(str(getattr(req, "path", ""))), peer=_host(addr))
            # gunicorn closes the connection on StopIteration, quietly.
            raise StopIteration from None
        finally:
            timer.close()
        self.turns.wait()
        return result
