"""The sidecar's own answers on HTTP/2 and the timeouts that lead to them.

Design rules:
- gRPC requests are answered as gRPC (``h2errors``), others with the JSON errors.
- The sidecar's own deadlines: ``grpc-timeout`` for the whole call,
  ``shard.io/timeout`` for the response head once the request was sent whole
  (as on HTTP/1.1). Either cancels the backend's stream.
- Once a response has begun, an error can only end it: gRPC trailers with
  ``UNAVAILABLE`` or ``DEADLINE_EXCEEDED``, or a reset of the client stream.
"""

from __future__ import annotations

from h2.connection import H2Connection
from h2.errors import ErrorCodes

from sidecar.errors import CODES, ProxyError
from sidecar.h2errors import DEADLINE_EXCEEDED, UNAVAILABLE, error_response, grpc_trailers
from sidecar.h2flow import FlowControl


class Answers(FlowControl):
    """Timeouts, lost backend streams and the error answers they give."""

    def request_sent(self) -> None:
        """The request is whole at the backend: its response head is timed."""
        self.up_ended = True
        routed = self.routed
        if routed is not None and not self.response_started and self.timer is None:
            self.timer = self.loop.call_later(routed.state.timeout_s, self.on_head_timeout)

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
