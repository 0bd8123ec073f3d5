"""Per-frame work h2 does for nothing in the sidecar, left out; h2's behaviour unchanged.

h2 (pinned <5) pays on every frame for things the sidecar never uses:
- ``_receive_frame`` builds ``repr(frame)`` for a trace log line even when no
  logger is configured (about 4% of the CPU per RPC);
- ``H2Stream.send_headers`` rebuilds every header list as UTF-8 bytes, when the
  sidecar only ever sends lists of ``(bytes, bytes)`` (typed as ``Headers``);
- ``_prepare_for_sending`` joins and checks each batch of outbound frames through
  generators, one frame at a time mostly;
- opening a stream recounts every open stream (and moves the closed ones to the
  record of closed streams): kept as is, it is what bounds ``streams``.

Design rules:
- Each override is a copy of h2 4.x's method minus the one costly line, so the
  frames, events, state changes and errors are h2's (``tests/sidecar/test_h2fast.py``
  drives both classes with the same input and compares).
- A header list that is not a list of byte pairs goes through h2's own path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from h2.connection import AllowedStreamIDs
from h2.errors import ErrorCodes
from h2.events import Event
from h2.exceptions import ProtocolError, StreamClosedError, StreamIDTooLowError
from h2.stream import H2Stream, StreamInputs
from h2.utilities import authority_from_headers, extract_method_header, is_informational_response
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    HeadersFrame,
    PushPromiseFrame,
    RstStreamFrame,
)

from sidecar.h2memo import MemoH2Connection, MemoStream


def all_bytes(headers: Any) -> bool:
    """A list of (bytes, bytes) pairs: what h2's UTF-8 re-encoding would copy unchanged."""
    if type(headers) is not list:
        return False
    for field in headers:
        if type(field) is not tuple or len(field) != 2 or type(field[0]) is not bytes or \
                type(field[1]) is not bytes:
            return False
    return True


class FastStream(MemoStream):
    """A ``MemoStream`` that sends a list of byte pairs without copying it first."""

    def send_headers(self, headers: Iterable[Any], encoder: Encoder, end_stream: bool = False,
                     ) -> list[HeadersFrame | ContinuationFrame | PushPromiseFrame]:
        if not all_bytes(headers):
            return super().send_headers(headers, encoder, end_stream)
        # h2 4.x's H2Stream.send_headers, with the list used as it is for the
        # utf8_encode_headers copy (the same pairs) and without the debug log line.
        bytes_headers: list[Any] = headers  # type: ignore[assignment]  # checked above
        input_ = StreamInputs.SEND_HEADERS
        if (not self.state_machine.client) and is_informational_response(bytes_headers):
            if end_stream:
                msg = "Cannot set END_STREAM on informational responses."
                raise ProtocolError(msg)
            input_ = StreamInputs.SEND_INFORMATIONAL_HEADERS
        events = self.state_machine.process_input(input_)
        hf = HeadersFrame(self.stream_id)
        hdr_validation_flags = self._build_hdr_validation_flags(events)
        frames = self._build_headers_frames(bytes_headers, encoder, hf, hdr_validation_flags)
        if end_stream:
            self.state_machine.process_input(StreamInputs.SEND_END_STREAM)
            frames[0].flags.add("END_STREAM")
        if self.state_machine.trailers_sent and not end_stream:
            msg = "Trailers must have END_STREAM set."
            raise ProtocolError(msg)
        if self.state_machine.client and self._authority is None:
            self._authority = authority_from_headers(bytes_headers)
        self.request_method = extract_method_header(bytes_headers)
        return frames


class FastH2Connection(MemoH2Connection):
    """A ``MemoH2Connection`` without the per-frame trace ``repr`` and with ``FastStream``s."""

    def _begin_new_stream(self, stream_id: int, allowed_ids: AllowedStreamIDs) -> H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream.__class__ = FastStream  # behaviour only, no state: as MemoStream
        return stream

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        # h2 4.x's, without its two generators (a join over one, an assert over the
        # other): about twelve calls per RPC, most with a single frame.
        if not frames:
            return
        limit = self.max_outbound_frame_size
        if len(frames) == 1:
            frame = frames[0]
            self._data_to_send += frame.serialize()
            assert frame.body_len <= limit
            return
        self._data_to_send += b"".join([f.serialize() for f in frames])
        assert all([f.body_len <= limit for f in frames])

    def _receive_frame(self, frame: Frame) -> list[Event]:
        # h2 4.x's H2Connection._receive_frame without its first line,
        # self.config.logger.trace("Received frame: %s", repr(frame)).
        events: list[Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events
