"""One HTTP/2 request (one RPC) from a client stream to its backend stream and back.

Design rules:
- Routed on its own by ``routing.route`` (its own key, its own owner); a stream
  for ordinal i is opened only on ordinal i's pool (``h2upstream``).
- This class takes the events of both connections; the state and how a stream
  ends are in ``h2stream``, flow control in ``h2flow``, the sidecar's own
  answers and timeouts in ``h2answers``, sending a request again (a slot-mode
  421, a stream the backend did not process) in ``h2replay``.
"""

from __future__ import annotations

import asyncio

from h2.errors import ErrorCodes
from h2.exceptions import H2Error, NoAvailableStreamIDError

from sidecar import routing
from sidecar.errors import ProxyError
from sidecar.h2headers import (
    Headers,
    downstream_response,
    downstream_trailers,
    grpc_timeout,
    header,
)
from sidecar.h2replay import Replays
from sidecar.h2slots import request_head
from sidecar.h2upstream import UpstreamH2
from sidecar.shardmap import RouteState


class Bridge(Replays):
    """A client stream and the backend stream it is forwarded on: routing and events."""

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
                self.held(waiting, decision.error)
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
            decision = routing.owner(current, key, path, True)
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

    def on_client_data(self, data: bytes, flow: int, ending: bool = False) -> None:
        """``ending``: the frame had END_STREAM; ``on_client_end`` follows at once and
        pushes, so the request's last DATA frame to the backend carries END_STREAM too."""
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
        self.keep(data)
        self.to_up.append((data, flow))
        if not ending:
            self.push_up()

    def on_client_end(self, trailers: Headers | None = None) -> None:
        self.client_ended = True
        self.request_trailers = trailers
        need = self.need
        if need is not None:
            body, self.body, self.body_bytes, self.need = b"".join(self.body), [], 0, None
            decision = routing.route_body(need, body)
            if body:
                self.keep(body)
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
        head = request_head(self.headers, routed)
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

    def on_response(self, headers: Headers) -> None:
        if self.finished or self.redirected(headers):  # a slot-mode 421 is never relayed
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
