"""h2c and gRPC through a static-mode sidecar (SPEC §8), with real grpcio clients and servers.

The backends (grpc_backends.py) answer FAILED_PRECONDITION to any call that is not
theirs, so every successful call below also proves it reached its key's owner.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from sidecar.shardfn import ordinal_for
from tests.sidecar.grpc_backends import GrpcBackend, start_grpc_backends
from tests.sidecar.harness import SidecarThread, request

N = 3


@pytest.fixture
def grpc_backends() -> Iterator[list[GrpcBackend]]:
    started = start_grpc_backends(N)
    yield started
    for backend in started:
        backend.close()


def route_arg(backends: list[GrpcBackend], name: str = "svc") -> str:
    return f"{name}=" + ",".join(b.address for b in backends)


@pytest.fixture
def grpc_sidecar(grpc_backends: list[GrpcBackend],
                 make_sidecar: Callable[..., SidecarThread]) -> SidecarThread:
    return make_sidecar("--route", route_arg(grpc_backends), "--timeout", "2s")


@pytest.fixture
def channel(grpc_sidecar: SidecarThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_sidecar.port}") as ch:
        yield ch


def key_md(key: str) -> list[tuple[str, str]]:
    return [("x-shard-key", key)]


def call_error(fn: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


# --- the four kinds of RPC, each key at its owner ------------------------------------------

def test_unary_calls_reach_the_owner_of_each_key(channel: grpc.Channel,
                                                 grpc_backends: list[GrpcBackend]) -> None:
    unary = channel.unary_unary("/shard.Echo/Unary")
    for i in range(60):
        key = f"account-{i}"
        answer = json.loads(unary(b"x" * i, metadata=key_md(key), timeout=5))
        assert answer == {"ordinal": ordinal_for(key, "modulo", N), "key": key, "size": i}
    assert all(b.calls for b in grpc_backends), "the keys spread over every ordinal"
    md = grpc_backends[0].metadata[-1]
    assert md["x-shard-count"] == str(N) and md["x-shard-ordinal"] == "0"


def test_server_streaming_rpc_passes_every_message(channel: grpc.Channel) -> None:
    stream = channel.unary_stream("/shard.Echo/ServerStream")
    owner = ordinal_for("7", "modulo", N)
    messages = list(stream(b"300:5000", metadata=key_md("7"), timeout=10))
    assert len(messages) == 300 and all(m == bytes([owner]) * 5000 for m in messages)


def test_client_streaming_rpc_passes_every_message(channel: grpc.Channel) -> None:
    upload = channel.stream_unary("/shard.Echo/ClientStream")
    answer = json.loads(upload(iter([b"a" * 70_000] * 40), metadata=key_md("k9"), timeout=10))
    assert answer == {"ordinal": ordinal_for("k9", "modulo", N), "messages": 40,
                      "bytes": 2_800_000}


def test_bidirectional_rpc_interleaves(channel: grpc.Channel) -> None:
    bidi = channel.stream_stream("/shard.Echo/Bidi")
    sent: list[bytes] = []
    ready = threading.Event()

    def requests() -> Iterator[bytes]:
        for i in range(20):
            sent.append(b"m%d" % i)
            yield b"m%d" % i
            ready.wait(5)  # the next message only after the reply to this one came back
            ready.clear()

    owner = ordinal_for("bidi", "modulo", N)
    replies = []
    for reply in bidi(requests(), metadata=key_md("bidi"), timeout=10):
        replies.append(reply)
        ready.set()
    assert replies == [b"%d:m%d" % (owner, i) for i in range(20)]


def test_trailers_and_backend_statuses_pass_through(channel: grpc.Channel,
                                                    grpc_backends: list[GrpcBackend]) -> None:
    """The backend's own status (here FAILED_PRECONDITION, for a forged ordinal) and
    its grpc-message reach the client unchanged: the sidecar drops the forged header."""
    unary = channel.unary_unary("/shard.Echo/Unary")
    owner = ordinal_for("5", "modulo", N)
    forged = [("x-shard-key", "5"), ("x-shard-ordinal", str((owner + 1) % N))]
    answer = json.loads(unary(b"", metadata=forged, timeout=5))
    assert answer["ordinal"] == owner  # the forged header never reached the backend
    response, call = unary.with_call(b"", metadata=key_md("5"), timeout=5)
    assert dict(call.initial_metadata())["x-shard-ordinal"] == str(owner)
    assert call.code() == grpc.StatusCode.OK


# --- errors ---------------------------------------------------------------------------------

def test_missing_key_is_invalid_argument(channel: grpc.Channel) -> None:
    err = call_error(lambda: channel.unary_unary("/shard.Echo/Unary")(b"", timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no shard key in header:X-Shard-Key" in (err.details() or "")


def test_ambiguous_key_is_invalid_argument(channel: grpc.Channel) -> None:
    unary = channel.unary_unary("/shard.Echo/Unary")
    err = call_error(lambda: unary(b"", metadata=[("x-shard-key", "1"), ("x-shard-key", "2")],
                                   timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "two different values" in (err.details() or "")


def test_unknown_route_is_not_found(grpc_backends: list[GrpcBackend],
                                    make_sidecar: Callable[..., SidecarThread]) -> None:
    """With two routes and none named, or a wrong one named, NOT_FOUND names the routes."""
    sidecar = make_sidecar("--route", route_arg(grpc_backends, "a"),
                           "--route", route_arg(grpc_backends, "b"))
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as ch:
        unary = ch.unary_unary("/shard.Echo/Unary")
        err = call_error(lambda: unary(b"", metadata=key_md("1"), timeout=5))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert "known: a, b" in (err.details() or "")
        err = call_error(lambda: unary(b"", metadata=[*key_md("1"), ("x-shard-route", "c")],
                                       timeout=5))
        assert err.code() == grpc.StatusCode.NOT_FOUND and "'c'" in (err.details() or "")
        answer = json.loads(unary(b"", metadata=[*key_md("1"), ("x-shard-route", "b")],
                                  timeout=5))
        assert answer["ordinal"] == ordinal_for("1", "modulo", N)


def test_owner_down_is_unavailable_with_retry_after(grpc_backends: list[GrpcBackend],
                                                    make_sidecar: Callable[..., SidecarThread]
                                                    ) -> None:
    """Ordinal 1 stops: its keys get UNAVAILABLE with retry-after; never another ordinal."""
    sidecar = make_sidecar("--route", route_arg(grpc_backends), "--static-probe", "0.1")
    grpc_backends[1].stop()
    time.sleep(0.5)  # the static probe marks it down
    key = next(k for k in (str(i) for i in range(100)) if ordinal_for(k, "modulo", N) == 1)
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as ch:
        unary = ch.unary_unary("/shard.Echo/Unary")
        err = call_error(lambda: unary(b"", metadata=key_md(key), timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "ordinal 1" in (err.details() or "") and "not ready" in (err.details() or "")
        assert ("retry-after", "1") in tuple(err.trailing_metadata() or ())
    assert not any(k == key for b in grpc_backends for _, k in b.calls)


def test_backend_not_listening_is_unavailable(grpc_backends: list[GrpcBackend],
                                              make_sidecar: Callable[..., SidecarThread]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    sidecar = make_sidecar("--route", f"svc={dead}", "--static-probe", "0")
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as ch:
        err = call_error(lambda: ch.unary_unary("/shard.Echo/Unary")(b"", metadata=key_md("1"),
                                                                     timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "cannot connect to ordinal 0 of route 'svc'" in (err.details() or "")


def test_json_key_is_refused_for_grpc(grpc_backends: list[GrpcBackend],
                                      make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", route_arg(grpc_backends), "--key", "json:id")
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as ch:
        err = call_error(lambda: ch.unary_unary("/shard.Echo/Unary")(b"{}", timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "json:id" in (err.details() or "") and "header:" in (err.details() or "")


def test_upstream_timeout_is_deadline_exceeded(channel: grpc.Channel,
                                               grpc_backends: list[GrpcBackend]) -> None:
    """shard.io/timeout (--timeout 2s) for the response head: DEADLINE_EXCEEDED, and the
    backend's call is cancelled."""
    started = time.monotonic()
    err = call_error(lambda: channel.unary_unary("/shard.Echo/Sleep")(
        b"10", metadata=key_md("t"), timeout=8))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not answer within 2s" in (err.details() or "")
    assert 1.8 < time.monotonic() - started < 4
    owner = grpc_backends[ordinal_for("t", "modulo", N)]
    wait_for(lambda: owner.cancelled == ["t"])


# --- cancellation, deadlines ---------------------------------------------------------------

def wait_for(condition: Callable[[], bool], seconds: float = 5) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


def test_client_cancellation_reaches_the_backend(channel: grpc.Channel,
                                                 grpc_backends: list[GrpcBackend]) -> None:
    call = channel.unary_stream("/shard.Echo/Hold")(b"", metadata=key_md("c1"), timeout=30)
    assert next(call) == b"holding"
    owner = grpc_backends[ordinal_for("c1", "modulo", N)]
    assert owner.cancelled == []
    call.cancel()
    wait_for(lambda: owner.cancelled == ["c1"])


def h2_call(port: int, headers: list[tuple[str, str]], body: bytes = b"",
            seconds: float = 10) -> tuple[dict[str, str], bytes, dict[str, str], float]:
    """One raw HTTP/2 request (no gRPC client deadline of its own):
    (response headers, body, trailers, seconds taken)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"),
                                (":authority", "localhost"), *headers])
        conn.send_data(sid, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        head: dict[str, str] = {}
        trailers: dict[str, str] = {}
        data = b""
        while True:
            chunk = sock.recv(65536)
            assert chunk, "the sidecar closed the connection"
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    head = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return head, data, trailers, time.monotonic() - started
            sock.sendall(conn.data_to_send())


GRPC_HEADERS = [(":path", "/shard.Echo/Sleep"), ("content-type", "application/grpc"),
                ("te", "trailers")]


def grpc_frame(message: bytes) -> bytes:
    return b"\0" + len(message).to_bytes(4, "big") + message


def test_grpc_timeout_is_enforced_by_the_sidecar(grpc_sidecar: SidecarThread,
                                                 grpc_backends: list[GrpcBackend]) -> None:
    """grpc-timeout 300m: DEADLINE_EXCEEDED from the sidecar at 0.3 s (the raw client has
    no deadline of its own), and the backend's call is cancelled."""
    head, _, trailers, took = h2_call(
        grpc_sidecar.port, [*GRPC_HEADERS, ("grpc-timeout", "300m"), ("x-shard-key", "d")],
        grpc_frame(b"5"))
    status = {**head, **trailers}
    assert status["grpc-status"] == "4", status
    assert "grpc-timeout 0.3s" in status["grpc-message"]
    assert 0.25 < took < 1.5
    owner = grpc_backends[ordinal_for("d", "modulo", N)]
    wait_for(lambda: owner.cancelled == ["d"])


# --- HTTP/2 that is not gRPC ----------------------------------------------------------------

def test_non_grpc_http2_gets_json_errors_and_statuses(grpc_sidecar: SidecarThread) -> None:
    head, body, _, _ = h2_call(grpc_sidecar.port, [(":path", "/svc/x")])
    assert head[":status"] == "400"
    assert json.loads(body)["error"] == "missing_shard_key"
    head, body, _, _ = h2_call(grpc_sidecar.port, [(":path", "/nope/x"), ("x-shard-route", "no")])
    assert head[":status"] == "404" and json.loads(body)["error"] == "unknown_route"
    head, body, _, _ = h2_call(grpc_sidecar.port, [(":path", "/_shard/routes")])
    assert head[":status"] == "404" and "HTTP/1.1 only" in json.loads(body)["message"]


def test_http11_still_served_on_the_same_port(grpc_sidecar: SidecarThread) -> None:
    """HTTP/1.1 on the h2c port: the preface check only looks at a first read."""
    status, _, body = request(grpc_sidecar.port, "GET", "/svc/x")
    assert status == 400 and json.loads(body)["error"] == "missing_shard_key"
    status, _, body = request(grpc_sidecar.port, "GET", "/nope/x", {"X-Shard-Key": "1"})
    assert status == 404


def test_malformed_frames_get_goaway_protocol_error(grpc_sidecar: SidecarThread) -> None:
    """A DATA frame on stream 0 breaks HTTP/2: GOAWAY PROTOCOL_ERROR, then a close."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    bad = b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"  # DATA, stream 0
    with socket.create_connection(("127.0.0.1", grpc_sidecar.port), timeout=5) as sock:
        sock.sendall(conn.data_to_send() + bad)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    events = conn.receive_data(received)
    goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    # and the sidecar still serves others
    with grpc.insecure_channel(f"127.0.0.1:{grpc_sidecar.port}") as ch:
        assert json.loads(ch.unary_unary("/shard.Echo/Unary")(b"", metadata=key_md("1"),
                                                              timeout=5))["key"] == "1"


# --- GOAWAY, flow control, many streams ----------------------------------------------------

def key_of(ordinal: int, prefix: str = "") -> str:
    return next(k for k in (f"{prefix}{i}" for i in range(1000))
                if ordinal_for(k, "modulo", N) == ordinal)


def test_goaway_drains_then_a_new_connection_to_the_same_ordinal(
        grpc_backends: list[GrpcBackend], make_sidecar: Callable[..., SidecarThread]) -> None:
    """Ordinal 0 stops gracefully (GOAWAY) during a stream: the stream finishes; the
    backend comes back on its port; the next call opens a new connection to ordinal 0."""
    sidecar = make_sidecar("--route", route_arg(grpc_backends), "--static-probe", "0")
    connects = sidecar.sidecar.stats.upstream_connects
    key = key_of(0)
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as ch:
        unary = ch.unary_unary("/shard.Echo/Unary")
        assert json.loads(unary(b"", metadata=key_md(key), timeout=5))["ordinal"] == 0
        assert connects[("svc", "0")] == 1
        stream = ch.unary_stream("/shard.Echo/ServerStream")(b"20:1000:0.05",
                                                             metadata=key_md(key), timeout=10)
        assert len(next(stream)) == 1000
        port = grpc_backends[0].port
        stopping = threading.Thread(target=grpc_backends[0].stop, args=(5,))
        stopping.start()
        assert len(list(stream)) == 19  # in flight at the GOAWAY: served to its end
        stopping.join(10)
        grpc_backends[0].close()
        grpc_backends[0] = GrpcBackend(0, port).start()
        assert json.loads(unary(b"", metadata=key_md(key), timeout=5))["ordinal"] == 0
        assert connects[("svc", "0")] == 2
        assert grpc_backends[0].calls == [("Unary", key)]
    assert all(k != key for b in grpc_backends[1:] for _, k in b.calls)


def test_slow_consumer_of_a_large_stream_holds_bounded_buffers(
        channel: grpc.Channel, grpc_sidecar: SidecarThread) -> None:
    """64 MB streamed to a client that stops reading for 2 s: the backend is held back by
    flow control (acknowledged only as the client reads), so the sidecar holds at most a
    stream window plus its socket's write limit, never the stream."""
    count, size = 1024, 64 * 1024

    def held() -> int:
        def measure() -> int:
            shared = grpc_sidecar.sidecar.ctx.h2
            assert shared is not None
            sockets = sum(f.transport.get_write_buffer_size() for f in shared.fronts)
            upstream = sum(c.transport.get_write_buffer_size() for p in shared.pools.pools.values()
                           for c in p.conns if c.transport is not None)
            return shared.buffered() + sockets + upstream
        return int(grpc_sidecar.call(measure))

    stream = channel.unary_stream("/shard.Echo/ServerStream")(
        b"%d:%d" % (count, size), metadata=key_md("big"), timeout=60)
    received = len(next(stream))
    peak = 0
    for _ in range(20):  # the client reads nothing for 2 s
        time.sleep(0.1)
        peak = max(peak, held())
    for message in stream:
        received += len(message)
        if received % (8 << 20) == 0:
            peak = max(peak, held())
    assert received == count * size
    assert peak <= 1 << 20, f"the sidecar held {peak} bytes for a slow reader"


def test_a_thousand_concurrent_streams_on_one_client_connection(
        channel: grpc.Channel, grpc_sidecar: SidecarThread,
        grpc_backends: list[GrpcBackend]) -> None:
    """1,000 RPCs open at once on one connection, each at its own key's owner, then all
    cancelled: every cancellation reaches its backend."""
    hold = channel.unary_stream("/shard.Echo/Hold")
    keys = [f"s{i}" for i in range(1000)]
    calls = [hold(b"", metadata=key_md(k), timeout=60) for k in keys]
    for call in calls:
        assert next(call) == b"holding"

    def open_streams() -> tuple[int, int]:
        shared = grpc_sidecar.sidecar.ctx.h2
        assert shared is not None
        return len(shared.fronts), sum(len(f.streams) for f in shared.fronts)

    assert grpc_sidecar.call(open_streams) == (1, 1000)
    for backend in grpc_backends:
        expected = {k for k in keys if ordinal_for(k, "modulo", N) == backend.ordinal}
        assert {k for _, k in backend.calls} == expected
    for call in calls:
        call.cancel()
    wait_for(lambda: sum(len(b.cancelled) for b in grpc_backends) == 1000, 10)
    wait_for(lambda: grpc_sidecar.call(open_streams)[1] == 0)


def test_sidecar_drain_lets_streams_in_flight_finish(grpc_backends: list[GrpcBackend]) -> None:
    """SIGTERM's drain: GOAWAY to HTTP/2 clients; a stream in flight still ends whole."""
    from tests.sidecar.harness import settings_from_args

    sidecar = SidecarThread(settings_from_args(["--route", route_arg(grpc_backends)])).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as ch:
            stream = ch.unary_stream("/shard.Echo/ServerStream")(
                b"10:100:0.05", metadata=key_md("dr"), timeout=10)
            assert len(next(stream)) == 100
            draining = threading.Thread(target=sidecar.stop, kwargs={"drain": True})
            draining.start()
            assert len(list(stream)) == 9
            draining.join(10)
            assert not draining.is_alive()
    finally:
        sidecar.stop()
