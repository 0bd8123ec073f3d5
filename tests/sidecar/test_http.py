"""HTTP/1.1 correctness of the proxy, against real backends, over real sockets."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

import pytest

from tests.sidecar.backends import Backend
from tests.sidecar.harness import SidecarThread, get_json, raw, request


def connect(sidecar: SidecarThread) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=10)


def exchange(conn: http.client.HTTPConnection, method: str, path: str, key: str,
             body: bytes | Iterator[bytes] | None = None,
             headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request(method, path, body=body, headers={"X-Shard-Key": key, **(headers or {})},
                 encode_chunked=body is not None and not isinstance(body, bytes))
    response = conn.getresponse()
    return response, response.read()


def read_response(stream: BinaryIO) -> tuple[bytes, bytes]:
    """(head, body) of one Content-Length response read from a socket's file."""
    lines = []
    while (line := stream.readline()) not in (b"\r\n", b""):
        lines.append(line)
    assert lines, "connection closed"
    head = b"".join(lines)
    length = next(int(line.split(b":")[1]) for line in lines
                  if line.lower().startswith(b"content-length:"))
    return head, stream.read(length)


def test_keep_alive_on_both_sides(sidecar: SidecarThread, backends: list[Backend]) -> None:
    conn = connect(sidecar)
    for i in range(30):
        response, body = exchange(conn, "GET", f"/svc/n/{i}", str(i))
        assert response.status == 200 and json.loads(body)["ordinal"] == i % 3
    conn.close()
    # One client connection; one pooled backend connection per ordinal.
    assert [b.connections for b in backends] == [1, 1, 1]
    assert len(sidecar.sidecar.ctx.connections) <= 1


def test_chunked_upload_is_forwarded_chunked(sidecar: SidecarThread) -> None:
    pieces = [b"a" * 1000, b"b" * 70000, b"c"]
    response, body = exchange(connect(sidecar), "POST", "/svc/up", "1", iter(pieces))
    seen = json.loads(body)
    assert response.status == 200
    assert seen["body_bytes"] == 71001
    assert seen["headers"]["transfer-encoding"] == "chunked"
    assert "content-length" not in seen["headers"]


@pytest.mark.parametrize("mode", ["bytes", "chunked", "eof"])
def test_response_bodies_of_every_framing(mode: str, sidecar: SidecarThread) -> None:
    conn = connect(sidecar)
    response, body = exchange(conn, "GET", f"/svc/{mode}/300000", "2")
    assert response.status == 200 and len(body) == 300000
    if mode == "bytes":
        assert response.getheader("Content-Length") == "300000"
    else:  # re-framed as chunked for the HTTP/1.1 client, and the connection stays up
        assert response.getheader("Transfer-Encoding") == "chunked"
    response, _ = exchange(conn, "GET", "/svc/again", "2")
    assert response.status == 200


def test_head_has_no_body_and_keeps_both_connections(sidecar: SidecarThread,
                                                     backends: list[Backend]) -> None:
    conn = connect(sidecar)
    for _ in range(3):
        response, body = exchange(conn, "HEAD", "/svc/bytes/5000", "0")
        assert (response.status, body, response.getheader("Content-Length")) == (200, b"", "5000")
    response, body = exchange(conn, "GET", "/svc/x", "0")
    assert json.loads(body)["connection"] == 1 and backends[0].connections == 1


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int, sidecar: SidecarThread) -> None:
    conn = connect(sidecar)
    response, body = exchange(conn, "GET", f"/svc/status/{status}", "1")
    assert (response.status, body) == (status, b"")
    assert response.getheader("Transfer-Encoding") is None
    response, body = exchange(conn, "GET", "/svc/x", "1")
    assert response.status == 200


def test_expect_100_continue(sidecar: SidecarThread) -> None:
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as sock:
        sock.sendall(b"POST /svc/up HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 1\r\n"
                     b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        head, body = read_response(sock.makefile("rb"))
        assert head.startswith(b"HTTP/1.1 200")
        seen = json.loads(body)
        assert seen["body_bytes"] == 5 and "expect" not in seen["headers"]


def test_expect_100_continue_refused_when_the_key_is_missing(sidecar: SidecarThread) -> None:
    answer = raw(sidecar.port, b"POST /svc/up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"Connection: close" in answer
    assert b"100 Continue" not in answer


def test_an_expectation_other_than_100_continue_gets_417(sidecar: SidecarThread,
                                                         backends: list[Backend]) -> None:
    seen = len(backends[1].seen)
    answer = raw(sidecar.port, b"POST /svc/up HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 1\r\n"
                 b"Content-Length: 5\r\nExpect: 200-ok\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 417 Expectation Failed") and b"Connection: close" in head
    error = json.loads(body)
    assert error["error"] == "expectation_failed" and "'200-ok'" in error["message"]
    assert len(backends[1].seen) == seen  # the backend never saw it


def test_idle_and_stalled_clients_are_closed_but_slow_backends_are_waited_for(
        backends: list[Backend], make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", "svc=" + ",".join(b.address for b in backends),
                           "--client-idle-timeout", "0.4")
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as idle, \
            socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as stalled:
        idle.sendall(b"GET /svc/x HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 1\r\n\r\n")
        head, _ = read_response(idle.makefile("rb"))
        assert head.startswith(b"HTTP/1.1 200")
        stalled.sendall(b"GET /svc/x HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        # A request waiting on its backend for longer than the idle timeout is not cut.
        status, _, _ = request(sidecar.port, "GET", "/svc/sleep/900", {"X-Shard-Key": "0"})
        assert status == 200
        started = time.monotonic()
        assert idle.recv(1) == b"" and stalled.recv(1) == b""  # closed, not answered
        assert time.monotonic() - started < 3


def test_client_connection_close(sidecar: SidecarThread) -> None:
    answer = raw(sidecar.port, b"GET /svc/x HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 1\r\n"
                 b"Connection: close\r\n\r\n")  # raw() reads until the sidecar closes
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close\r\n" in answer


def test_http10_client(sidecar: SidecarThread) -> None:
    answer = raw(sidecar.port, b"GET /svc/chunked/1000 HTTP/1.0\r\nX-Shard-Key: 1\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower()
    assert body == b"x" * 1000  # no chunked for 1.0: the close ends the body


def test_backend_connection_close_is_not_pooled(sidecar: SidecarThread,
                                                backends: list[Backend]) -> None:
    conn = connect(sidecar)
    response, body = exchange(conn, "GET", "/svc/close", "0")
    assert response.status == 200 and response.getheader("Connection") is None
    response, body = exchange(conn, "GET", "/svc/x", "0")  # client side stays alive
    assert json.loads(body)["connection"] == 2 and backends[0].connections == 2


def test_pipelined_requests_are_answered_in_order(sidecar: SidecarThread) -> None:
    requests = b"".join(
        b"GET /svc/%b HTTP/1.1\r\nHost: x\r\nX-Shard-Key: %d\r\n\r\n" % (path, key)
        for path, key in ((b"sleep/200", 0), (b"fast", 1), (b"missing", -1), (b"fast2", 2))
    ).replace(b"X-Shard-Key: -1\r\n", b"")
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as sock:
        sock.sendall(requests)
        stream = sock.makefile("rb")
        answers = [read_response(stream) for _ in range(4)]
    assert [h.split(b"\r\n")[0] for h, _ in answers] == [
        b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 200 OK"]
    paths = [json.loads(b).get("path") for _, b in answers]
    assert paths == ["/sleep/200", "/fast", None, "/fast2"]


def test_deep_pipeline_behind_a_slow_request(sidecar: SidecarThread) -> None:
    # 400 requests queued behind a slow one, most answered by the sidecar itself: they
    # must come back in order (and not blow the stack when the slow one finishes).
    slow = b"GET /svc/sleep/300 HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n\r\n"
    rest = [b"GET /svc/n%d HTTP/1.1\r\nHost: x\r\n%b\r\n"
            % (i, b"X-Shard-Key: 1\r\n" if i % 50 == 0 else b"") for i in range(400)]
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=10) as sock:
        sock.sendall(slow + b"".join(rest))
        stream = sock.makefile("rb")
        answers = [read_response(stream) for _ in range(401)]
    statuses = [int(head.split()[1]) for head, _ in answers]
    assert statuses == [200] + [200 if i % 50 == 0 else 400 for i in range(400)]
    assert [json.loads(b)["path"] for _, b in answers[1::50]] == [
        f"/n{i}" for i in range(0, 400, 50)]


def test_hop_by_hop_headers_are_dropped(sidecar: SidecarThread) -> None:
    head = {"Connection": "X-Private, keep-alive", "X-Private": "secret", "Keep-Alive": "300",
            "Proxy-Authorization": "Basic eDp5", "Proxy-Foo": "1", "TE": "trailers",
            "X-Kept": "yes"}
    status, response_head, body = get_json(sidecar.port, "/svc/x", {"X-Shard-Key": "1", **head})
    assert status == 200
    forwarded = body["headers"]
    assert forwarded["x-kept"] == "yes"
    for name in ("x-private", "keep-alive", "proxy-authorization", "proxy-foo", "te",
                 "connection"):
        assert name not in forwarded, name
    assert "keep-alive" not in response_head  # the backend sends Keep-Alive: timeout=5


@pytest.mark.parametrize(
    ("data", "status"),
    [
        pytest.param(b"GET /svc/" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"414", id="long-target"),
        pytest.param(b"GET /svc/x HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", b"431",
                     id="huge-header"),
        pytest.param(b"GET /svc/x HTTP/1.1\r\n" + b"X-Many: a\r\n" * 8000 + b"\r\n", b"431",
                     id="many-headers"),
        pytest.param(b"GARBAGE\r\n\r\n", b"400", id="malformed"),
        pytest.param(b"POST /svc/x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked"
                     b"\r\n\r\n", b"400", id="smuggling-cl-and-te"),
    ],
)
def test_bad_requests_are_refused_and_closed(data: bytes, status: bytes,
                                             sidecar: SidecarThread) -> None:
    answer = raw(sidecar.port, data)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert b"Connection: close" in answer


def test_malformed_chunk_mid_upload_is_400_and_the_upload_is_dropped(
        sidecar: SidecarThread, backends: list[Backend]) -> None:
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as sock:
        sock.sendall(b"POST /svc/up HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.2)  # the head and the first chunk are on their way to the backend
        sock.sendall(b"ZZ-not-hex\r\n")
        answer = sock.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 400") and b"Connection: close" in answer
    time.sleep(0.2)
    assert backends[0].seen == []  # the backend never got a complete request


def test_client_disconnect_mid_upload_aborts_the_backend_connection(
        sidecar: SidecarThread, backends: list[Backend]) -> None:
    conn = connect(sidecar)
    exchange(conn, "GET", "/svc/warm", "0")  # backend connection 1 is now pooled
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as sock:
        sock.sendall(b"POST /svc/up HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n"
                     b"Content-Length: 10000000\r\n\r\n" + b"z" * 100000)
        time.sleep(0.2)
    time.sleep(0.2)
    _, body = exchange(conn, "GET", "/svc/after", "0")
    # The half-sent upload's connection (1) was not pooled again: a new one serves this.
    assert json.loads(body)["connection"] == 2
    assert [s.path for s in backends[0].seen] == ["/warm", "/after"]


def test_graceful_drain_finishes_in_flight(backends: list[Backend],
                                           make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", "svc=" + ",".join(b.address for b in backends))
    result: list[int] = []
    slow = threading.Thread(target=lambda: result.append(
        request(sidecar.port, "GET", "/svc/sleep/400", {"X-Shard-Key": "0"})[0]))
    slow.start()
    time.sleep(0.1)
    sidecar.stop(drain=True)
    slow.join()
    assert result == [200]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", sidecar.port), timeout=1)


def _one_shot_backend(answers: list[bytes]) -> tuple[socket.socket, threading.Thread]:
    """Connection 1 answers one request and then closes on reading the next (a keep-alive
    the backend dropped just as the sidecar reused it); connection 2 answers normally."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def answer(conn: socket.socket, body: bytes) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))

    def serve() -> None:
        first, _ = server.accept()
        answer(first, answers[0])
        first.recv(65536)
        first.close()
        with contextlib.suppress(OSError):
            second, _ = server.accept()
            answer(second, answers[1])
            second.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize(("method", "status"), [pytest.param("GET", 200, id="get-retried"),
                                                pytest.param("POST", 502, id="post-not-retried")])
def test_stale_pooled_connection(method: str, status: int,
                                 make_sidecar: Callable[..., SidecarThread]) -> None:
    server, thread = _one_shot_backend([b"first", b"second"])
    port = server.getsockname()[1]
    sidecar = make_sidecar("--route", f"svc=127.0.0.1:{port}", "--static-probe", "0")
    try:
        conn = connect(sidecar)
        assert exchange(conn, "GET", "/svc/a", "0")[1] == b"first"
        response, body = exchange(conn, method, "/svc/b", "0",
                                  body=b"x" if method == "POST" else None)
        assert response.status == status
        if status == 200:
            assert body == b"second"  # a safe request, re-sent on a new connection
        else:
            assert json.loads(body)["error"] == "upstream_error"
    finally:
        with contextlib.suppress(OSError):  # wake a backend still waiting in accept()
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        thread.join(2)
        server.close()


def _canned_backend(answer: bytes) -> tuple[socket.socket, threading.Thread]:
    """A backend that reads one request per connection and sends ``answer`` as it is."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(answer)
                    conn.recv(65536)  # until the sidecar closes or sends more

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize(
    ("answer", "status_line", "body"),
    [
        pytest.param(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                     b"HTTP/1.1 200 Fine\r\nContent-Length: 2\r\nX-B: 1\r\n\r\nok",
                     b"HTTP/1.1 200 OK\r\n", b"ok", id="1xx-dropped-final-relayed"),
        pytest.param(b"HTTP/1.1 599 Whatever\r\nContent-Length: 0\r\n\r\n",
                     b"HTTP/1.1 599 \r\n", b"", id="unknown-status-empty-reason"),
        pytest.param(b"HTTP/1.0 404 Nope\r\nContent-Length: 1\r\n\r\nx",
                     b"HTTP/1.1 404 Not Found\r\n", b"x", id="http10-backend"),
    ],
)
def test_status_line_is_remade_with_the_standard_reason(
        answer: bytes, status_line: bytes, body: bytes,
        make_sidecar: Callable[..., SidecarThread]) -> None:
    """Informational responses stay between the sidecar and the backend; the final one
    gets the standard reason phrase (a backend's own phrase is not relayed)."""
    server, _ = _canned_backend(answer)
    sidecar = make_sidecar("--route", f"svc=127.0.0.1:{server.getsockname()[1]}",
                           "--static-probe", "0")
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as sock:
        sock.sendall(b"GET /svc/x HTTP/1.1\r\nHost: a\r\nX-Shard-Key: 1\r\n\r\n")
        head, got = read_response(sock.makefile("rb"))
    server.close()
    assert head.startswith(status_line)
    assert got == body
    assert b"Link" not in head and head.count(b"HTTP/1.1") == 1
