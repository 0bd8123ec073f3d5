"""The sidecar's h2 connection class (sidecar/h2wire.py): what it keeps per connection."""

from __future__ import annotations

import h2.config
import h2.connection

from sidecar.h2wire import MAX_CLIENT_STREAMS, DrainingH2Connection, new_connection


def test_closed_streams_remembered_are_bounded() -> None:
    """h2 remembers 65,536 closed streams per connection (some 8 MB on a busy backend
    connection); the sidecar's connections remember four times the client stream limit."""
    limit = DrainingH2Connection.MAX_CLOSED_STREAMS
    assert limit == 4 * MAX_CLIENT_STREAMS < h2.connection.H2Connection.MAX_CLOSED_STREAMS
    client = new_connection(client_side=True, max_streams=100)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    for _ in range(limit + 500):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                  (b":path", b"/"), (b":authority", b"a")], end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(sid, [(b":status", b"200")], end_stream=True)
        client.receive_data(server.data_to_send())
    client.get_next_available_stream_id()
    assert client.open_outbound_streams == 0  # moves the closed ones to the record
    assert limit - 10 <= len(client._closed_streams) <= limit
