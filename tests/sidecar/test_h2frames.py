"""The frames the sidecar sends a backend for a unary call, seen by a raw h2 backend.

A unary request whose client sent END_STREAM on its DATA frame reaches the
backend as HEADERS and one DATA frame with END_STREAM (no empty DATA frame
after it); its later calls on the same connection reuse the HPACK table, so
their header blocks are only indexed fields, and they still arrive whole.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import h2.config
import h2.connection
import h2.events
import pytest

from tests.sidecar.harness import SidecarThread
from tests.sidecar.test_grpc import grpc_frame, h2_call


class RawBackend:
    """One h2c backend connection at a time, answering every call with one message and
    grpc-status 0; it records the request events per stream."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.events: list[h2.events.Event] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        with self.listener:
            sock, _ = self.listener.accept()
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.initiate_connection()
        with sock:
            sock.sendall(conn.data_to_send())
            while chunk := sock.recv(65536):
                for event in conn.receive_data(chunk):
                    self.events.append(event)
                    if isinstance(event, h2.events.StreamEnded):
                        sid = event.stream_id
                        conn.send_headers(sid, [(b":status", b"200"),
                                                (b"content-type", b"application/grpc")])
                        conn.send_data(sid, grpc_frame(b"ok"))
                        conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
                sock.sendall(conn.data_to_send())


@pytest.fixture
def raw_backend() -> Iterator[RawBackend]:
    yield RawBackend()


def test_unary_request_ends_on_its_data_frame(raw_backend: RawBackend,
                                              make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", f"svc=127.0.0.1:{raw_backend.port}", "--timeout", "2s")
    headers = [(":path", "/svc/Echo"), ("content-type", "application/grpc"),
               ("te", "trailers"), ("x-shard-key", "k")]
    for _ in range(3):
        head, body, trailers, _ = h2_call(sidecar.port, headers, grpc_frame(b"hello"))
        assert head[":status"] == "200" and body == grpc_frame(b"ok")
        assert trailers["grpc-status"] == "0"
    requests = [e for e in raw_backend.events if isinstance(e, h2.events.RequestReceived)]
    data = [e for e in raw_backend.events if isinstance(e, h2.events.DataReceived)]
    assert len(requests) == 3 and len(data) == 3  # no empty DATA frame to end a stream
    assert all(e.stream_ended is not None and e.data == grpc_frame(b"hello") for e in data)
    assert all((b"x-shard-key", b"k") in (e.headers or []) for e in requests)
