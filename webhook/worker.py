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
"""

from __future__ import annotations

from collections import deque
from typing import Any

from gevent.hub import Waiter, get_hub
from gunicorn.workers.ggevent import GeventWorker


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


class FairGeventWorker(GeventWorker):  # type: ignore[misc]
    def init_process(self) -> None:
        self.turns = Turns()
        super().init_process()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        result = super().handle_request(listener_name, req, sock, addr)
        self.turns.wait()
        return result
