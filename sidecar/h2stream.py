"""The state of one HTTP/2 request (one RPC) across its two streams, and how it ends.

Design rules:
- A client stream and the backend stream it is forwarded on are one
  ``StreamPair``; ``h2flow`` moves bytes between them, ``h2answers`` holds the
  sidecar's own answers and timeouts, ``h2bridge.Bridge`` routes and takes the
  events of both connections.
- Every way a stream ends goes through ``finish``, which counts it once and
  returns to each side the flow-control credit the other will never take.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from h2.connection import H2Connection
from h2.exceptions import H2Error

from sidecar import routing
from sidecar.h2errors import is_grpc
from sidecar.h2headers import Headers, header
from sidecar.h2upstream import UpstreamH2


class H2Front(Protocol):
    """What a stream uses of its client connection (``h2front.H2Front``, which imports
    this module: a Protocol here keeps ``sidecar`` free of import cycles)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def h2(self) -> H2Connection: ...

    @property
    def write_paused(self) -> bool: ...

    @property
    def shared(self) -> Any: ...  # h2front.H2Shared

    def touch(self) -> None: ...

    def stream_done(self, bridge: StreamPair) -> None: ...


class StreamPair:
    """A client stream and the backend stream it is forwarded on."""

    def __init__(self, front: H2Front, sid: int, headers: Headers) -> None:
        self.front, self.sid, self.headers = front, sid, headers
        self.loop = front.loop
        self.started = self.loop.time()
        self.grpc = is_grpc(header(headers, b"content-type"))
        self.finished = False
        self.routed: routing.Routed | None = None
        self.need: routing.NeedBody | None = None
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.up: UpstreamH2 | None = None
        self.up_sid = 0
        #: Request bytes not yet taken by the backend, with the flow-controlled length
        #: each still owes the client; the same for the response towards the client.
        self.to_up: list[tuple[bytes, int]] = []
        self.to_client: list[tuple[bytes, int]] = []
        self.client_ended = False
        self.request_trailers: Headers | None = None
        self.up_ended = False
        self.response_started = False
        self.response_trailers: Headers | None = None
        self.response_ended = False
        self.status = 0
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def buffered(self) -> int:
        return sum(len(d) for d, _ in self.to_up) + sum(len(d) for d, _ in self.to_client) + \
            self.body_bytes

    def request_sent(self) -> None:
        """The request is whole at the backend (``h2answers`` starts the head timer)."""
        raise NotImplementedError

    def send_client(self, send: Callable[[H2Connection], object]) -> None:
        try:
            send(self.front.h2)
        except H2Error:
            self.finish(self.status)
        self.front.touch()

    def reset_client(self, code: int) -> None:
        self.send_client(lambda h2: h2.reset_stream(self.sid, code))
        self.finish(self.status)

    def drop_response(self) -> None:
        """Discard response bytes not yet sent, acknowledging them upstream."""
        up = self.up
        for _, flow in self.to_client:
            if up is not None and flow:
                up.h2.acknowledge_received_data(flow, self.up_sid)
        self.to_client = []

    def cancel_upstream(self) -> None:
        up = self.up
        if up is not None and self.up_sid and (self.up_sid in up.streams):
            up.cancel(self.up_sid)
        self.up_ended = True

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def finish(self, status: int) -> None:
        """Counted once: per route and ordinal, as HTTP/1.1 requests are."""
        if self.finished:
            return
        self.finished = True
        self.cancel_timer()
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self.drop_response()
        front = self.front
        for _, flow in self.to_up:  # what the backend will never take, back to the client
            if flow:
                with contextlib.suppress(H2Error):
                    front.h2.acknowledge_received_data(flow, self.sid)
        self.to_up = []
        front.stream_done(self)
        routed = self.routed
        stats = front.shared.ctx.stats
        slot = stats.slot(routed.state.name, str(routed.ordinal)) if routed else \
            stats.slot("-", "")
        slot.observe(status, self.loop.time() - self.started)
