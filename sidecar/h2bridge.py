"""One HTTP/2 request (one RPC) from a client stream to its backend stream and back.

Design rules:
- Routed on its own by ``routing.route`` (its own key, its own owner); a stream
  for ordinal i is opened only on ordinal i's pool (``h2upstream``).
- Flow control is end to end: bytes from one side are acknowledged to it only
  when the other side's window took them. A slow reader therefore stops its
  sender, and a stream holds at most one window of bytes here.
- gRPC requests are answered as gRPC (``h2errors``); the sidecar's own
  deadlines: ``grpc-timeout`` for the whole call, ``shard.io/timeout`` for the
  response head once the request was sent whole (as on HTTP/1.1).
- Every way a stream ends goes through ``finish``, which counts it once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error, NoAvailableStreamIDError

from sidecar import routing
from sidecar.errors import CODES, ProxyError
from sidecar.h2errors import DEADLINE_EXCEEDED, UNAVAILABLE, error_response, grpc_trailers, is_grpc
from sidecar.h2headers import (
    Headers,
    downstream_response,
    downstream_trailers,
    grpc_timeout,
    header,
    upstream_request,
)
from sidecar.h2upstream import UpstreamH2
from sidecar.shardmap import RouteState

if TYPE_CHECKING:
    from sidecar.h2front import H2Front


class Bridge:
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

    # --- the request ------------------------------------------------------------------

    def start(self, routes: dict[bytes, RouteState]) -> None:
        method = header(self.headers, b":method") or b""
        path = header(self.headers, b":path") or b""
        seconds = grpc_timeout(header(self.headers, b"grpc-timeout"))
        if seconds is not None:
            self.deadline = self.loop.call_later(seconds, self.on_deadline, seconds)
        if method == b"CONNECT":
            self.fail(ProxyError("method_not_allowed", "CONNECT (tunnels) is not supported"))
            return
        if path == b"/_shard" or path.startswith((b"/_shard/", b"/_shard?")):
            # Never routed on to a backend as an "only route" path would be.
            self.fail(ProxyError("not_found", "the /_shard/ introspection endpoints are served "
                                 "over HTTP/1.1 only"))
            return
        lookup = routing.headers_lookup(self.headers)
        self.decided(routing.route(method, path, lookup, routes, grpc=self.grpc))

    def decided(self, decision: routing.Decision) -> None:
        if isinstance(decision, routing.Routed):
            self.routed = decision
            state, shard = decision.state, decision.shard
            assert shard.address is not None
            self.front.shared.pools.get(state.name, decision.ordinal, shard.address).assign(self)
        elif isinstance(decision, routing.NeedBody):
            self.need = decision
            if self.client_ended:
                self.decided(routing.route_body(decision, b"".join(self.body)))
        else:
            waiting, key = decision.state, decision.key
            if waiting is not None and key is not None and waiting.spec.wait_ms and \
                    decision.code in routing.WAITABLE:
                self.task = self.loop.create_task(self.wait_for_owner(waiting, key))
                return
            self.fail(decision.error)

    async def wait_for_owner(self, state: RouteState, key: str) -> None:
        """``wait:<ms>``: re-resolve the same key on every map change, until the wait ends."""
        shard_map = self.front.shared.ctx.map
        name = state.name
        end = self.started + state.spec.wait_ms / 1000
        path = self.headers_path()
        while not self.finished:
            current = shard_map.get(name)
            if current is None:
                self.fail(ProxyError("unknown_route", f"route '{name}' was removed", route=name))
                return
            decision = routing.owner(current, key, path)
            remaining = end - self.loop.time()
            if isinstance(decision, routing.Routed) or remaining <= 0:
                self.task = None
                if isinstance(decision, routing.Refusal):
                    err = decision.error
                    decision = routing.Refusal(ProxyError(
                        err.code, f"{err.message} (waited {state.spec.wait_ms} ms)",
                        **err.details))
                self.decided(decision)
                self.front.touch()
                return
            try:
                async with asyncio.timeout(remaining):
                    await shard_map.changed(name)
            except TimeoutError:
                pass

    def headers_path(self) -> bytes:
        picked = routing.pick_route(header(self.headers, b":path") or b"/",
                                    routing.headers_lookup(self.headers),
                                    self.front.shared.ctx.map.routes)
        return picked[1] if isinstance(picked, tuple) else b"/"

    def on_client_data(self, data: bytes, flow: int) -> None:
        if self.need is not None:
            # A json: key: the body is read (and acknowledged) before anything is sent.
            self.front.h2.acknowledge_received_data(flow, self.sid)
            self.body.append(data)
            self.body_bytes += len(data)
            limit = self.front.shared.ctx.settings.max_json_body
            if self.body_bytes > limit:
                self.fail(ProxyError("body_too_large", f"the request body is over {limit} bytes, "
                                     f"the limit for reading {self.need.state.key}", limit=limit))
            return
        self.to_up.append((data, flow))
        self.push_up()

    def on_client_end(self, trailers: Headers | None = None) -> None:
        self.client_ended = True
        self.request_trailers = trailers
        need = self.need
        if need is not None:
            body, self.body, self.body_bytes, self.need = b"".join(self.body), [], 0, None
            decision = routing.route_body(need, body)
            if body:
                self.to_up.append((body, 0))  # acknowledged as it was read
            self.decided(decision)
            return
        self.push_up()

    def on_client_reset(self) -> None:
        """RST_STREAM from the client (a cancelled RPC): it reaches the backend."""
        self.cancel_upstream()
        self.finish(499)

    # --- the backend stream -----------------------------------------------------------

    def attach(self, conn: UpstreamH2) -> None:
        if self.finished:
            return
        routed = self.routed
        assert routed is not None
        head = upstream_request(self.headers, routed.upstream_path, routed.ordinal,
                                routed.state.count)
        end = self.client_ended and not self.to_up and self.request_trailers is None
        try:
            self.up_sid = conn.open(self, head, end)
        except NoAvailableStreamIDError:
            conn.accepting = False  # ids used up: the next connection to the same ordinal
            conn.pool.assign(self)
            return
        except H2Error as err:
            self.fail(ProxyError("upstream_error", f"ordinal {routed.ordinal} of route "
                                 f"'{routed.state.name}' refused the request head: {err}",
                                 route=routed.state.name, ordinal=routed.ordinal))
            return
        self.up = conn
        if end:
            self.request_sent()
        self.push_up()

    def connect_failed(self, reason: str) -> None:
        routed = self.routed
        assert routed is not None
        self.fail(ProxyError("upstream_error", reason, route=routed.state.name,
                             ordinal=routed.ordinal))

    def request_sent(self) -> None:
        """The request is whole at the backend: its response head is timed."""
        self.up_ended = True
        routed = self.routed
        if routed is not None and not self.response_started and self.timer is None:
            self.timer = self.loop.call_later(routed.state.timeout_s, self.on_head_timeout)

    def push_up(self) -> None:
        """Move request bytes into the backend stream's window; acknowledge them to the client."""
        up = self.up
        if up is None or self.finished or up.closed or self.up_ended:
            return
        h2, sid, ack = up.h2, self.up_sid, self.front.h2.acknowledge_received_data
        try:
            while self.to_up and not up.write_paused:
                data, flow = self.to_up[0]
                room = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if room <= 0 and data:
                    break
                if len(data) <= room:
                    self.to_up.pop(0)
                    if data:
                        h2.send_data(sid, data)
                    if flow:
                        ack(flow, self.sid)
                else:
                    h2.send_data(sid, data[:room])
                    self.to_up[0] = (data[room:], max(0, flow - room))
                    if flow:
                        ack(min(flow, room), self.sid)
            if not self.to_up and self.client_ended:
                if self.request_trailers is not None:
                    h2.send_headers(sid, self.request_trailers, end_stream=True)
                else:
                    h2.end_stream(sid)
                self.request_sent()
        except H2Error:
            pass  # the backend stream closed meanwhile: its end arrives as an event
        up.touch()
        self.front.touch()

    def on_response(self, headers: Headers) -> None:
        if self.finished:
            return
        self.response_started = True
        self.cancel_timer()
        status = header(headers, b":status") or b"0"
        self.status = int(status) if status.isdigit() else 0
        routed = self.routed
        self.send_client(lambda h2: h2.send_headers(
            self.sid, downstream_response(headers, routed.ordinal if routed else None)))

    def on_data(self, data: bytes, flow: int) -> None:
        self.to_client.append((data, flow))
        self.push_down()

    def on_trailers(self, headers: Headers) -> None:
        self.response_trailers = downstream_trailers(headers)
        self.push_down()

    def on_end(self) -> None:
        self.response_ended = True
        self.push_down()

    def on_reset(self, code: int) -> None:
        try:
            name = ErrorCodes(code).name
        except ValueError:
            name = str(code)
        self.on_lost(f"reset the stream ({name})", code, prefix=True)

    def on_lost(self, reason: str, code: int = ErrorCodes.INTERNAL_ERROR,
                prefix: bool = False) -> None:
        """The backend stream ended without a response end: answer, or end as gRPC does."""
        self.up_ended = True
        routed = self.routed
        where = f"ordinal {routed.ordinal} of route '{routed.state.name}'" if routed else "backend"
        message = f"{where} {reason}" if prefix else reason
        if self.response_started and self.grpc and self.response_trailers is None and \
                not self.response_ended:
            self.response_trailers = grpc_trailers(UNAVAILABLE, message)
            self.push_down()
        elif self.response_started:
            self.reset_client(code)
        else:
            self.fail(ProxyError("upstream_error", message,
                                 **({"route": routed.state.name, "ordinal": routed.ordinal}
                                    if routed else {})))

    def push_down(self) -> None:
        """Move response bytes into the client stream's window; acknowledge them upstream."""
        front = self.front
        if self.finished:
            return
        h2, sid = front.h2, self.sid
        up = self.up
        try:
            while self.to_client and not front.write_paused:
                data, flow = self.to_client[0]
                room = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if room <= 0 and data:
                    break
                take = data if len(data) <= room else data[:room]
                if len(data) <= room:
                    self.to_client.pop(0)
                    acked = flow
                else:
                    self.to_client[0] = (data[room:], max(0, flow - room))
                    acked = min(flow, room)
                if take:
                    h2.send_data(sid, take)
                if acked and up is not None:
                    up.h2.acknowledge_received_data(acked, self.up_sid)
                    up.touch()
            if not self.to_client:
                if self.response_trailers is not None:
                    h2.send_headers(sid, self.response_trailers, end_stream=True)
                    self.finish(self.status or 200)
                elif self.response_ended:
                    h2.end_stream(sid)
                    self.finish(self.status)
        except H2Error:
            self.finish(self.status)  # the client stream is gone
        front.touch()

    # --- the sidecar's own answers and timeouts ----------------------------------------

    def on_head_timeout(self) -> None:
        self.timer = None
        routed = self.routed
        if self.finished or self.response_started or routed is None:
            return
        state = routed.state
        self.cancel_upstream()
        self.fail(ProxyError("upstream_timeout", f"ordinal {routed.ordinal} of route "
                             f"'{state.name}' did not answer within {state.timeout_s:g}s",
                             route=state.name, ordinal=routed.ordinal))

    def on_deadline(self, seconds: float) -> None:
        """``grpc-timeout`` passed: the backend is cancelled, the client told so."""
        self.deadline = None
        if self.finished:
            return
        self.cancel_upstream()
        message = f"the call's deadline (grpc-timeout {seconds:g}s) passed at the sidecar"
        if self.response_started and self.grpc:
            self.drop_response()
            self.response_trailers = grpc_trailers(DEADLINE_EXCEEDED, message)
            self.push_down()
        else:
            self.fail(ProxyError("upstream_timeout", message, timeout_s=seconds))

    def fail(self, error: ProxyError) -> None:
        """Answer ``error`` (gRPC or JSON), or end a begun response as well as it can be."""
        if self.finished:
            return
        self.cancel_upstream()
        if self.response_started:
            self.reset_client(ErrorCodes.INTERNAL_ERROR)
            return
        routed = self.routed
        head, body = error_response(error, self.grpc, routed.ordinal if routed else None)
        status = CODES[error.code][0]

        def answer(h2: H2Connection) -> None:
            h2.send_headers(self.sid, head, end_stream=not body)
            if body:
                h2.send_data(self.sid, body, end_stream=True)
            if not self.client_ended:  # the rest of the request is not wanted (RFC 9113 §8.1)
                h2.reset_stream(self.sid, ErrorCodes.NO_ERROR)
        self.send_client(answer)
        self.finish(status)

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
