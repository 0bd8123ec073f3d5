"""h2's per-frame work the sidecar skips (sidecar/h2fast.py): the same frames, events
and errors as h2 without it.

Socket-free: h2 connections talk to each other in memory; the sidecar's connection
class on one side, h2's own (same settings) on the other, against the same peer.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from h2.exceptions import ProtocolError, StreamClosedError
from hpack import HeaderTuple

from sidecar.h2fast import FastH2Connection, FastStream, all_bytes
from sidecar.h2wire import DrainingH2Connection, new_connection

Headers = list[tuple[bytes, bytes]]
REQUEST: Headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/s/M"),
                    (b":authority", b"svc"), (b"content-type", b"application/grpc"),
                    (b"te", b"trailers"), (b"x-shard-key", b"1")]


def plain(client_side: bool) -> h2.connection.H2Connection:
    """h2's own class with the sidecar's settings (new_connection's)."""
    conn = new_connection(client_side=client_side, max_streams=100)
    conn.__class__ = h2.connection.H2Connection
    return conn


def peer(client_side: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client_side,
                                                                header_encoding=None))
    conn.initiate_connection()
    return conn


def shake(ours: h2.connection.H2Connection, other: h2.connection.H2Connection) -> None:
    for _ in range(2):
        other.receive_data(ours.data_to_send())
        ours.receive_data(other.data_to_send())


def describe(events: list[h2.events.Event]) -> list[str]:
    return [repr(e) for e in events]


def test_the_sidecar_uses_the_fast_classes() -> None:
    conn = new_connection(client_side=True, max_streams=100)
    assert isinstance(conn, FastH2Connection) and isinstance(conn, DrainingH2Connection)
    conn.send_headers(1, REQUEST)
    assert type(conn.streams[1]) is FastStream


def calls(client: h2.connection.H2Connection, server: h2.connection.H2Connection,
          ) -> tuple[bytes, list[str]]:
    """A unary call, a server-streamed one, a reset, a frame on the reset stream and
    one on a closed stream, with ``client`` the sidecar-side connection: what it sent
    and the events it saw."""
    shake(client, server)
    sent, seen = b"", []
    for sid in (1, 3):
        client.send_headers(sid, REQUEST)
        client.send_data(sid, b"\0\0\0\0\x05hello", end_stream=True)
        sent += (out := client.data_to_send())
        server.receive_data(out)
        server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        for _ in range(sid):
            server.send_data(sid, b"\0\0\0\0\x02ok")
        server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        seen += describe(client.receive_data(server.data_to_send()))
    client.send_headers(5, REQUEST)
    server.receive_data(client.data_to_send())
    client.reset_stream(5)
    server.send_headers(5, [(b":status", b"200")])
    server_bytes = server.data_to_send()
    sent += client.data_to_send()
    seen += describe(client.receive_data(server_bytes))  # on a reset stream: RST_STREAM
    sent += client.data_to_send()
    return sent, seen


def test_same_bytes_and_events_as_h2() -> None:
    fast_sent, fast_seen = calls(new_connection(client_side=True, max_streams=100), peer(False))
    h2_sent, h2_seen = calls(plain(True), peer(False))
    assert fast_sent == h2_sent
    assert fast_seen == h2_seen
    assert any("TrailersReceived" in e for e in fast_seen)


@pytest.mark.parametrize("forgotten", [False, True])
def test_a_frame_on_a_stream_closed_by_end_is_the_same_connection_error(forgotten: bool) -> None:
    """Still in h2's streams (the stream's own error) or already moved to its record of
    closed streams by the next stream's opening (h2's StreamIDTooLowError path)."""
    sent = []
    for ours in (new_connection(client_side=True, max_streams=100), plain(True)):
        server = peer(False)
        shake(ours, server)
        ours.send_headers(1, REQUEST, end_stream=True)
        server.receive_data(ours.data_to_send())
        server.send_headers(1, [(b":status", b"200")], end_stream=True)
        late = server.data_to_send()
        ours.receive_data(late)
        if forgotten:
            ours.send_headers(3, REQUEST)
            assert 1 not in ours.streams
        with pytest.raises(StreamClosedError):  # the same HEADERS again
            ours.receive_data(late)
        sent.append(ours.data_to_send())
    assert sent[0] == sent[1] and sent[0]  # GOAWAY queued by h2 either way


def test_headers_that_are_not_byte_pairs_take_h2s_path() -> None:
    assert all_bytes(REQUEST)
    assert not all_bytes(tuple(REQUEST))
    assert not all_bytes([(b":method", "POST")])
    assert not all_bytes([HeaderTuple(b":method", b"POST")])
    assert not all_bytes([(b"a", b"b", b"c")])
    # str headers are still UTF-8 encoded by h2, as without the override.
    fast, ref = new_connection(client_side=True, max_streams=100), plain(True)
    text = [(n.decode(), v.decode()) for n, v in REQUEST]
    for conn in (fast, ref):
        conn.send_headers(1, text, end_stream=True)
    assert fast.data_to_send() == ref.data_to_send()


def test_trailers_without_end_stream_are_refused_as_by_h2() -> None:
    for conn in (new_connection(client_side=True, max_streams=100), plain(True)):
        conn.send_headers(1, REQUEST)
        with pytest.raises(ProtocolError, match="END_STREAM"):
            conn.send_headers(1, [(b"x-trailer", b"1")])


def test_a_header_block_split_over_continuation_frames_is_the_same() -> None:
    """Several frames in one batch (HEADERS and CONTINUATIONs) and one frame alone."""
    big = [*REQUEST, (b"x-big", b"v" * 40_000)]
    sent = []
    for conn in (new_connection(client_side=True, max_streams=100), plain(True)):
        conn.send_headers(1, big)
        conn.send_data(1, b"\0\0\0\0\x01x", end_stream=True)
        sent.append(conn.data_to_send())
    assert sent[0] == sent[1]
    # CONTINUATION frames (type 9) on stream 1: one without END_HEADERS, the last with it.
    assert b"\x09\x00\x00\x00\x00\x01" in sent[0] and b"\x09\x04\x00\x00\x00\x01" in sent[0]
