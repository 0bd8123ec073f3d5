"""What both HTTP/2 sides share: the h2 connection class, its settings, the preface.

Design rules:
- Flow-control windows bound memory: a stream holds at most its window of
  unforwarded bytes, a connection at most its connection window, because
  received data is acknowledged (``acknowledge_received_data``) only once the
  other side has taken it.
- A GOAWAY (received or sent) is a drain, not a close: the peer still finishes the streams
  up to its last stream id. h2 moves its state machine to CLOSED on a received
  GOAWAY (after which those streams' frames would be protocol errors), so
  ``DrainingH2Connection`` keeps the open state; the owner stops starting streams.
"""

from __future__ import annotations

from typing import Any, Final

from h2.config import H2Configuration
from h2.connection import ConnectionState
from h2.settings import SettingCodes

from sidecar.h2fast import FastH2Connection

#: The client connection preface (RFC 9113 §3.4): prior knowledge h2c starts with it.
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Per-stream receive window: what a stream may hold unforwarded (the RFC default).
STREAM_WINDOW: Final = 65535
#: Receive window of a whole connection: enough for many streams to move at once.
CONNECTION_WINDOW: Final = 4 << 20
#: Streams a client may have open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
MAX_CLIENT_STREAMS: Final = 1024
#: Streams opened on one backend connection before another is opened to the same ordinal,
#: when the backend itself does not set a lower SETTINGS_MAX_CONCURRENT_STREAMS.
MAX_UPSTREAM_STREAMS: Final = 1000
#: Largest header list accepted (SETTINGS_MAX_HEADER_LIST_SIZE), as HTTP/1.1's header cap.
MAX_HEADER_LIST: Final = 64 * 1024


class DrainingH2Connection(FastH2Connection):
    """An ``H2Connection`` that stays open for the streams a received GOAWAY lets finish."""

    #: How many closed streams h2 remembers (to tell a late frame on a reset stream from
    #: a protocol error). h2's 65,536 is an OrderedDict of some 8 MB on every busy
    #: long-lived connection (backend ones are); four times the streams a client may
    #: have open still covers every frame in flight.
    MAX_CLOSED_STREAMS = 4 * MAX_CLIENT_STREAMS

    def _receive_goaway_frame(self, frame: Any) -> Any:
        state = self.state_machine.state
        result = super()._receive_goaway_frame(frame)
        if state in (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN):
            self.state_machine.state = state
        return result

    def go_away_gracefully(self, last_stream_id: int) -> None:
        """GOAWAY NO_ERROR, after which the streams up to ``last_stream_id`` still finish
        (h2 would close its state machine on sending it, as on receiving one)."""
        state = self.state_machine.state
        self.close_connection(last_stream_id=last_stream_id)
        if state in (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN):
            self.state_machine.state = state


def new_connection(client_side: bool, max_streams: int) -> DrainingH2Connection:
    """An h2 connection with the sidecar's settings, its preface and window sent."""
    # No outbound validation: what is sent was validated when it came in (inbound
    # validation on both sides; h2headers drops connection-specific fields) or is the
    # sidecar's own, so it would repeat the same checks (about 6% of the CPU per RPC).
    config = H2Configuration(client_side=client_side, header_encoding=None,
                             validate_inbound_headers=True, normalize_inbound_headers=True,
                             validate_outbound_headers=False)
    conn = DrainingH2Connection(config=config)
    conn.local_settings.update({
        SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
        SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        SettingCodes.ENABLE_PUSH: 0,
    })
    conn.local_settings.acknowledge()  # sent as the initial SETTINGS below
    conn.initiate_connection()
    conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    return conn
