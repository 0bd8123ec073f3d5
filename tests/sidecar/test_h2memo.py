"""Memoised HPACK (sidecar/h2memo.py): the same bytes and headers as h2 without it.

Socket-free: h2 connections talk to each other in memory. Each test runs a
sequence where a kept result would be wrong if it were reused too late (the
dynamic table changed, its size was updated, the block was validated for
another kind of header block).
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple, OversizedHeaderListError

from sidecar.h2memo import Decoded, MemoDecoder, MemoEncoder, MemoH2Connection
from sidecar.h2wire import new_connection

Headers = list[tuple[bytes, bytes]]
FLAGS = HeaderValidationFlags(is_client=True, is_trailer=False, is_response_header=False,
                              is_push_promise=False)


def request(path: bytes, *extra: tuple[bytes, bytes]) -> Headers:
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
            (b":authority", b"svc"), (b"content-type", b"application/grpc"),
            (b"te", b"trailers"), *extra]


#: Repeats (hits), new values (table changes), a never-indexed field, a long value
#: (Huffman and plain literals), a size update in the middle.
SEQUENCE: list[Headers | int] = [
    request(b"/a"), request(b"/a"), request(b"/a"),
    request(b"/b", (b"x-shard-key", b"k1")), request(b"/a"),
    request(b"/b", (b"x-shard-key", b"k1")), request(b"/b", (b"x-shard-key", b"k1")),
    request(b"/a", (b"authorization", b"Bearer secret")),
    request(b"/a", (b"authorization", b"Bearer secret")),
    256,  # table size: evicts, then the same lists encode differently
    request(b"/a"), request(b"/a"), request(b"/b", (b"x-shard-key", b"k1")),
    request(b"/c", (b"x-long", b"\x7f" * 300)), request(b"/a"), request(b"/a"),
    0, request(b"/a"), request(b"/a"), 4096, request(b"/a"), request(b"/a"),
]


def as_sent(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [NeverIndexedHeaderTuple(n, v) if n == b"authorization" else (n, v)
            for n, v in headers]


def test_decoder_matches_hpack_and_hits_on_repeats() -> None:
    encoder, plain, memo = Encoder(), Decoder(), MemoDecoder(Decoder())
    hits = 0
    for step in SEQUENCE:
        if isinstance(step, int):
            encoder.header_table_size = step
            continue
        block = encoder.encode(as_sent(step))
        before = memo.kept.get(block)
        got = memo.decode(block, raw=True)
        hits += got is before and before is not None
        expected = plain.decode(block, raw=True)
        assert list(got) == expected
        assert [type(h) for h in got] == [type(h) for h in expected]  # never-indexed kept
    assert hits >= 3  # the third /a, and repeats once the table stopped changing


def test_decoder_never_reuses_a_block_across_table_changes() -> None:
    memo = MemoDecoder(Decoder())
    add_a = Encoder().encode([(b"x-a", b"1")])  # literal with indexing: index 62 is x-a
    memo.decode(add_a, raw=True)
    first = memo.decode(b"\xbe", raw=True)  # index 62
    assert list(first) == [(b"x-a", b"1")]
    assert memo.decode(b"\xbe", raw=True) is first  # kept: the table did not change
    memo.decode(Encoder().encode([(b"x-b", b"2")]), raw=True)  # now index 62 is x-b
    assert list(memo.decode(b"\xbe", raw=True)) == [(b"x-b", b"2")]
    memo.decode(b"\x20", raw=True)  # a size update to 0 empties the table
    with pytest.raises(Exception, match="Invalid table index"):
        memo.decode(b"\xbe", raw=True)


def test_decoder_checks_the_list_size_limit_again_when_it_changes() -> None:
    memo = MemoDecoder(Decoder())
    memo.decode(Encoder().encode([(b"x-big", b"v" * 100)]), raw=True)  # index 62
    kept = memo.decode(b"\xbe", raw=True)
    assert memo.decode(b"\xbe", raw=True) is kept
    memo.max_header_list_size = 50
    with pytest.raises(OversizedHeaderListError):
        memo.decode(b"\xbe", raw=True)


def test_encoder_emits_the_same_bytes_as_hpack() -> None:
    plain, memo = Encoder(), MemoEncoder(Encoder())
    hits = 0
    for step in SEQUENCE:
        if isinstance(step, int):
            plain.header_table_size = memo.header_table_size = step
            continue
        items = tuple(as_sent(step))
        key_free = not any(isinstance(h, NeverIndexedHeaderTuple) for h in items)
        memo.next_key = (FLAGS, items) if key_free else None
        kept = memo.kept.get((memo.next_key, True))
        got = memo.encode(items)
        hits += kept is not None and got is kept
        assert got == plain.encode(items)
    assert hits >= 2


def pair(memo_client: bool) -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    """A client (the sidecar's connection class, or plain h2) and a sidecar server."""
    if memo_client:
        client: h2.connection.H2Connection = new_connection(client_side=True, max_streams=100)
    else:
        client = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False))
        client.initiate_connection()
    server = new_connection(client_side=False, max_streams=100)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def test_h2_connections_send_the_same_bytes_and_deliver_the_same_headers() -> None:
    memo_client, memo_server = pair(True)
    plain_client, _ = pair(False)
    for step in SEQUENCE:
        if isinstance(step, int):
            continue  # h2 sets table sizes from SETTINGS only
        for client in (memo_client, plain_client):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, as_sent(step), end_stream=True)
        sent = memo_client.data_to_send()
        assert sent == plain_client.data_to_send()
        events = memo_server.receive_data(sent)
        received = [e for e in events if isinstance(e, h2.events.RequestReceived)]
        assert [list(e.headers or ()) for e in received] == [step]
        if any(n == b"authorization" for n, _ in step):
            assert any(isinstance(h, NeverIndexedHeaderTuple) for h in received[0].headers or ())
    assert isinstance(memo_server.decoder, MemoDecoder) and memo_server.decoder.kept


def test_a_block_validated_as_trailers_is_checked_again_as_request_headers() -> None:
    client, server = pair(True)
    trailers = [(b"grpc-status", b"0")]
    client.send_headers(1, request(b"/a"))
    client.send_headers(1, trailers, end_stream=True)
    client.send_headers(3, request(b"/a"))
    client.send_headers(3, trailers, end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert sum(isinstance(e, h2.events.TrailersReceived) for e in events) == 2
    kept = [b for b in server.decoder.kept.values() if list(b) == trailers]
    assert kept and isinstance(kept[0], Decoded)  # the second trailers block was a hit
    # The same bytes as a request head have no pseudo-header fields: h2 must refuse it.
    block = next(k for k, v in server.decoder.kept.items() if list(v) == trailers)
    with pytest.raises(ProtocolError, match="missing mandatory"):
        server.receive_data(headers_frame(5, block))


def headers_frame(sid: int, block: bytes) -> bytes:
    """HEADERS with END_STREAM and END_HEADERS."""
    return len(block).to_bytes(3, "big") + b"\x01\x05" + sid.to_bytes(4, "big") + block


def test_a_kept_block_still_fails_validation_when_it_is_invalid() -> None:
    _, server = pair(True)
    # Never-indexed literals leave the table as it was: the decoded block is kept.
    block = Encoder().encode([NeverIndexedHeaderTuple(n, v)
                              for n, v in [*request(b"/a"), (b"connection", b"close")]])
    with pytest.raises(ProtocolError, match="Connection-specific"):
        server.receive_data(headers_frame(1, block))
    decoder = server.decoder
    assert isinstance(decoder, MemoDecoder)
    kept = decoder.kept.get(block)
    assert kept is not None and not kept.processed  # decoded, never taken as valid


def test_memo_connection_class_is_what_the_sidecar_uses() -> None:
    conn = new_connection(client_side=True, max_streams=10)
    assert isinstance(conn, MemoH2Connection)
    assert isinstance(conn.encoder, MemoEncoder) and isinstance(conn.decoder, MemoDecoder)


def test_large_header_lists_are_not_kept() -> None:
    """A short block can name a big table entry many times: kept by its decoded size."""
    memo = MemoDecoder(Decoder())
    memo.decode(Encoder().encode([(b"x-big", b"v" * 3000)]), raw=True)  # index 62
    assert list(memo.decode(b"\xbe\xbe\xbe", raw=True)) == [(b"x-big", b"v" * 3000)] * 3
    assert b"\xbe\xbe\xbe" not in memo.kept
    memo.decode(b"\xbe", raw=True)
    assert b"\xbe" in memo.kept
    encoder = MemoEncoder(Encoder())
    big = ((b"x-big", b"v" * 3000),) * 3
    for _ in range(2):
        encoder.next_key = (FLAGS, big)
        encoder.encode(big)
    assert not encoder.kept
