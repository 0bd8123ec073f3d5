"""End-to-end flow control of one HTTP/2 request: bytes between its client and backend streams.

Design rules:
- Bytes from one side are acknowledged to it only when the other side's window
  took them. A slow reader therefore stops its sender, and a stream holds at
  most one window of bytes here.
- A request or response ends (END_STREAM or trailers) only after its last byte.
"""

from __future__ import annotations

from h2.exceptions import H2Error

from sidecar.h2stream import StreamPair


class FlowControl(StreamPair):
    """Moves request bytes up and response bytes down, as the windows allow."""

    def push_up(self) -> None:
        """Move request bytes into the backend stream's window; acknowledge them to the client."""
        up = self.up
        if up is None or self.finished or up.closed or self.up_ended:
            return
        h2, sid, ack = up.h2, self.up_sid, self.front.h2.acknowledge_received_data
        ended = False  # END_STREAM went out on the last DATA frame (one frame less)
        try:
            while self.to_up and not up.write_paused:
                data, flow = self.to_up[0]
                room = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if room <= 0 and data:
                    break
                if len(data) <= room:
                    self.to_up.pop(0)
                    if data:
                        ended = not self.to_up and self.client_ended and \
                            self.request_trailers is None
                        h2.send_data(sid, data, end_stream=ended)
                    if flow:
                        ack(flow, self.sid)
                else:
                    h2.send_data(sid, data[:room])
                    self.to_up[0] = (data[room:], max(0, flow - room))
                    if flow:
                        ack(min(flow, room), self.sid)
            if not self.to_up and self.client_ended:
                if ended:
                    pass
                elif self.request_trailers is not None:
                    h2.send_headers(sid, self.request_trailers, end_stream=True)
                else:
                    h2.end_stream(sid)
                self.request_sent()
        except H2Error:
            pass  # the backend stream closed meanwhile: its end arrives as an event
        up.touch()
        self.front.touch()

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
