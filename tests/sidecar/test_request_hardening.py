"""Request-side hardening (issue 11): what an attacker's raw bytes can and cannot make
the sidecar send to a backend. The backend here records every byte it receives."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.sidecar.harness import SidecarThread, raw
from tests.sidecar.recorder import Recorder


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    started = Recorder().start()
    yield started
    started.stop()


@pytest.fixture
def proxy(recorder: Recorder, make_sidecar: Callable[..., SidecarThread]) -> SidecarThread:
    """One ordinal (every key routes to the recorder), key from X-Shard-Key."""
    return make_sidecar("--route", f"svc={recorder.address}", "--static-probe", "0",
                        "--timeout", "2s")


def responses(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(status, head, body) of each Content-Length response in ``data``."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        found.append((status, head, rest[:length]))
        data = rest[length:]
    return found


def error_of(body: bytes) -> str:
    return str(json.loads(body)["error"])


def one_answer(answer: bytes, status: int, recorder: Recorder, code: str | None = None) -> bytes:
    """The body of the single answer in ``answer``, which must have ``status``; with an
    error ``code``, that code, and nothing at all may have reached the backend."""
    (got, _, body), = responses(answer)
    assert got == status, answer
    if code is not None:
        assert error_of(body) == code, body
        time.sleep(0.1)  # whatever the sidecar wrongly sent would have arrived by now
        assert recorder.received_bytes == 0
    return body


def wait_for_requests(recorder: Recorder, count: int) -> None:
    deadline = time.monotonic() + 3
    while len(recorder.requests) < count and time.monotonic() < deadline:
        time.sleep(0.01)


# --- 1. chunked request trailers --------------------------------------------------------

# Connection: X-Shard-Key would drop the key header of a head not yet sent.
TRAILERS = (b"X-Shard-Key: 2\r\nAuthorization: Bearer stolen\r\nX-Forwarded-For: 6.6.6.6\r\n"
            b"Connection: X-Shard-Key\r\nExpect: nothing\r\n")


def chunked_post(key: bytes | None, path: bytes = b"/svc/up") -> bytes:
    key_line = b"X-Shard-Key: " + key + b"\r\n" if key is not None else b""
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + key_line +
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n" + TRAILERS + b"\r\n")


def _assert_no_trailer_reached(recorder: Recorder) -> None:
    for got in recorder.requests:
        names = [n.lower() for n, _ in got.headers]
        assert b"authorization" not in names and b"x-forwarded-for" not in names, got.headers
        assert got.values(b"X-Shard-Key") in ([b"1"], [b"0"]), got.headers
        assert got.trailers == []  # dropped, the same way on every kind of connection
        assert got.values(b"Transfer-Encoding") == [b"chunked"] or not got.body


@pytest.mark.parametrize("warm", [False, True], ids=["new-connection", "pooled"])
def test_trailers_never_become_headers(warm: bool, proxy: SidecarThread,
                                       recorder: Recorder) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        if warm:
            sock.sendall(b"GET /svc/warm HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n\r\n")
            sock.recv(65536)
        sock.sendall(chunked_post(b"1"))
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    wait_for_requests(recorder, 2 if warm else 1)
    assert recorder.requests[-1].body == b"hello"
    _assert_no_trailer_reached(recorder)


def test_pipelined_trailers_are_neither_headers_nor_routed_on(proxy: SidecarThread,
                                                              recorder: Recorder) -> None:
    pipeline = (b"GET /svc/first HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n\r\n"
                + chunked_post(b"1", b"/svc/keyed") + chunked_post(None, b"/svc/keyless")
                + b"GET /svc/last HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n\r\n")
    answers = responses(raw(proxy.port, pipeline + b"GET /svc/x HTTP/1.1\r\nConnection: close"
                            b"\r\nHost: x\r\nX-Shard-Key: 0\r\n\r\n"))
    assert [status for status, _, _ in answers] == [200, 200, 400, 200, 200]
    assert error_of(answers[2][2]) == "missing_shard_key"  # the trailer key is not a key
    wait_for_requests(recorder, 4)
    assert [r.target for r in recorder.requests] == [b"/first", b"/keyed", b"/last", b"/x"]
    _assert_no_trailer_reached(recorder)


def test_an_endless_trailer_section_is_refused(proxy: SidecarThread,
                                               recorder: Recorder) -> None:
    """httptools buffers a field until its end: trailer bytes are bounded like a head's."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"POST /svc/up HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 1\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-Huge: ")
        answer = b""
        try:
            for _ in range(200):
                sock.sendall(b"a" * 8192)
        except OSError:
            pass  # the sidecar closed on us: the answer may be in the receive buffer
        try:
            while data := sock.recv(65536):
                answer += data
        except OSError:
            pass
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


# --- 4. ambiguous keys ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("head", "status"),
    [
        pytest.param(b"X-Shard-Key: 1\r\nX-Shard-Key: 2\r\n", 400, id="two-values"),
        pytest.param(b"X-Shard-Key: 1\r\nx-shard-key: 1 \r\n", 200, id="identical-repeat"),
        pytest.param(b"X-Shard-Key: 1, 2\r\n", 400, id="comma-list"),
        pytest.param(b"X-Shard-Key: 1\r\nX-Other: a\r\nX-SHARD-KEY: 2\r\n", 400,
                     id="two-spellings"),
    ],
)
def test_ambiguous_header_keys(head: bytes, status: int, proxy: SidecarThread,
                               recorder: Recorder) -> None:
    answer = raw(proxy.port, b"GET /svc/x HTTP/1.1\r\nHost: x\r\n" + head +
                 b"Connection: close\r\n\r\n")
    body = one_answer(answer, status, recorder, "ambiguous_shard_key" if status == 400 else None)
    if status == 400:
        assert "X-Shard-Key" in json.loads(body)["message"]
    else:
        wait_for_requests(recorder, 1)
        assert {v.strip() for v in recorder.requests[0].values(b"X-Shard-Key")} == {b"1"}


@pytest.fixture
def query_proxy(recorder: Recorder, make_sidecar: Callable[..., SidecarThread]) -> SidecarThread:
    return make_sidecar("--route", f"svc={recorder.address}", "--static-probe", "0",
                        "--key", "query:key")


@pytest.mark.parametrize(
    ("query", "status"),
    [
        pytest.param(b"key=1&key=2", 400, id="two-values"),
        pytest.param(b"key=1&a=b&key=%31", 200, id="identical-after-decoding"),
        pytest.param(b"key=1&k%65y=2", 400, id="encoded-name"),
    ],
)
def test_ambiguous_query_keys(query: bytes, status: int, query_proxy: SidecarThread,
                              recorder: Recorder) -> None:
    answer = raw(query_proxy.port, b"GET /svc/x?" + query + b" HTTP/1.1\r\nHost: x\r\n"
                 b"Connection: close\r\n\r\n")
    one_answer(answer, status, recorder, "ambiguous_shard_key" if status == 400 else None)


@pytest.fixture
def path_proxy(recorder: Recorder, make_sidecar: Callable[..., SidecarThread]) -> SidecarThread:
    return make_sidecar("--route", f"svc={recorder.address}", "--static-probe", "0",
                        "--key", "path:1")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param(b"/svc/users/7/doc", 200, id="plain"),
        pytest.param(b"/svc/users/7/../8/doc", 400, id="dot-dot-after-the-key"),
        pytest.param(b"/svc/users/./7", 400, id="dot-before-the-key"),
        pytest.param(b"/svc/users/%2e%2E/7", 400, id="encoded-dot-dot"),
    ],
)
def test_path_keys_a_backend_would_normalise_away(path: bytes, status: int,
                                                  path_proxy: SidecarThread,
                                                  recorder: Recorder) -> None:
    answer = raw(path_proxy.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n"
                 b"Connection: close\r\n\r\n")
    one_answer(answer, status, recorder, "ambiguous_shard_key" if status == 400 else None)


@pytest.fixture
def json_proxy(recorder: Recorder, make_sidecar: Callable[..., SidecarThread]) -> SidecarThread:
    return make_sidecar("--route", f"svc={recorder.address}", "--static-probe", "0",
                        "--key", "json:account.id")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param(b'{"account": {"id": 1, "id": 2}}', 400, "ambiguous_shard_key",
                     id="duplicate-key-member"),
        pytest.param(b'{"account": {"id": 1}, "account": {"id": 2}}', 400,
                     "ambiguous_shard_key", id="duplicate-parent"),
        pytest.param(b'{"account": {"id": 1, "id": 1}}', 200, None, id="identical-repeat"),
        pytest.param(b'{"account": {"id": 1}, "x": 1, "x": 2}', 200, None,
                     id="duplicate-off-the-path"),
        pytest.param(b'{"account": {"id": "\\ud800"}}', 400, "invalid_shard_key",
                     id="lone-surrogate"),
        pytest.param(b'{"account": ' + b"[" * 100000 + b"]" * 100000 + b"}", 400,
                     "invalid_shard_key", id="deeply-nested"),
    ],
)
def test_json_keys(body: bytes, status: int, code: str | None, json_proxy: SidecarThread,
                   recorder: Recorder) -> None:
    answer = one_answer(raw(json_proxy.port, b"POST /svc/x HTTP/1.1\r\nHost: x\r\nConnection: "
                            b"close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)),
                        status, recorder, code)
    if code == "invalid_shard_key" and b"[[" in body:
        assert "deep" in json.loads(answer)["message"]


# --- 5. head deadline -------------------------------------------------------------------

@pytest.mark.parametrize("trickle", [b"GET /svc/x HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 1\r\n",
                                     b"\r\n"], ids=["head", "empty-lines"])
def test_a_head_trickled_byte_by_byte_gets_408(trickle: bytes, recorder: Recorder,
                                               make_sidecar: Callable[..., SidecarThread],
                                               ) -> None:
    proxy = make_sidecar("--route", f"svc={recorder.address}", "--static-probe", "0",
                         "--client-head-timeout", "0.6", "--client-idle-timeout", "5")
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        try:
            for i in range(100):
                sock.sendall(trickle[i % len(trickle):][:1])
                time.sleep(0.1)
        except OSError:
            pass
        try:
            while data := sock.recv(65536):
                answer += data
        except OSError:
            pass
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and b"Connection: close" in answer, answer
    assert error_of(responses(answer)[0][2]) == "request_timeout"
    assert 0.5 < elapsed < 3
    assert recorder.received_bytes == 0


def test_head_timeout_does_not_cut_a_slow_keep_alive_client(
        recorder: Recorder, make_sidecar: Callable[..., SidecarThread]) -> None:
    proxy = make_sidecar("--route", f"svc={recorder.address}", "--static-probe", "0",
                         "--client-head-timeout", "0.4")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        for _ in range(6):  # 1.2 s of requests on one connection, each head quick
            sock.sendall(b"GET /svc/x HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 1\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(0.2)


# --- 10. Host -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        pytest.param(b"GET /svc/x HTTP/1.1\r\n", 400, id="missing"),
        pytest.param(b"GET /svc/x HTTP/1.1\r\nHost: a\r\nhost: b\r\n", 400, id="two"),
        pytest.param(b"GET /svc/x HTTP/1.1\r\nHost: a\r\nHOST: a\r\n", 400, id="two-identical"),
        pytest.param(b"GET /svc/x HTTP/1.1\r\nHost: a, b\r\n", 400, id="list"),
        pytest.param(b"GET /svc/x HTTP/1.0\r\n", 200, id="http10-may-omit"),
        pytest.param(b"GET /svc/x HTTP/1.0\r\nHost: a\r\nHost: b\r\n", 400, id="http10-two"),
        pytest.param(b"GET /svc/x HTTP/1.1\r\nHost: a\r\n", 200, id="one"),
    ],
)
def test_host_field(request_head: bytes, status: int, proxy: SidecarThread,
                    recorder: Recorder) -> None:
    answer = raw(proxy.port, request_head + b"X-Shard-Key: 1\r\nConnection: close\r\n\r\n")
    body = one_answer(answer, status, recorder, "bad_request" if status == 400 else None)
    if status == 400:
        assert "Host" in json.loads(body)["message"]


@pytest.mark.parametrize(
    ("version", "status"),
    [
        pytest.param(b"HTTP/2.0", 505, id="2.0"),
        pytest.param(b"HTTP/0.9", 505, id="0.9"),
        pytest.param(b"HTTP/1.2", 400, id="1.2-invalid"),
        pytest.param(b"HTTP/1.0", 200, id="1.0"),
    ],
)
def test_http_versions_other_than_1_0_and_1_1_are_refused(version: bytes, status: int,
                                                           proxy: SidecarThread,
                                                           recorder: Recorder) -> None:
    """A request line claiming HTTP/2.0 (or 0.9) was forwarded as HTTP/1.1."""
    answer = raw(proxy.port, b"GET /svc/x " + version + b"\r\nHost: a\r\nX-Shard-Key: 1\r\n"
                 b"Connection: close\r\n\r\n")
    codes = {505: "http_version_not_supported", 400: "bad_request", 200: None}
    body = one_answer(answer, status, recorder, codes[status])
    if status == 505:
        assert version.decode() in json.loads(body)["message"]


# --- 11. Transfer-Encoding and framing ------------------------------------------------------

@pytest.mark.parametrize(
    ("framing", "status", "code"),
    [
        pytest.param(b"Transfer-Encoding: gzip, chunked\r\n", 501, "unsupported_transfer_encoding",
                     id="gzip-chunked"),
        pytest.param(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", 501,
                     "unsupported_transfer_encoding", id="gzip-chunked-two-lines"),
        pytest.param(b"Transfer-Encoding: xchunked\r\n", 400, "bad_request", id="xchunked"),
        pytest.param(b"Transfer-Encoding: chunked, identity\r\n", 400, "bad_request",
                     id="chunked-not-final"),
        pytest.param(b"Transfer-Encoding: identity\r\n", 400, "bad_request", id="identity"),
        pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400, "bad_request",
                     id="te-and-cl"),
        pytest.param(b"Content-Length: 5\r\nContent-Length: 6\r\n", 400, "bad_request",
                     id="two-lengths"),
    ],
)
def test_framing_is_validated_before_anything_is_sent(framing: bytes, status: int, code: str,
                                                      proxy: SidecarThread,
                                                      recorder: Recorder) -> None:
    slow = b"GET /svc/slow HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 1\r\n\r\n"
    bad = (b"POST /svc/x HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 1\r\n" + framing +
           b"\r\n5\r\nhello\r\n0\r\n\r\n")
    for data, first in ((bad, 0), (slow + bad, 1)):  # alone, and pipelined behind another
        answers = responses(raw(proxy.port, data))
        assert answers[first][0] == status, answers
        assert error_of(answers[first][2]) == code
        assert b"Connection: close" in answers[first][1]
        time.sleep(0.1)
        assert [r.target for r in recorder.requests] == [b"/slow"] * first
        assert recorder.received_bytes == sum(len(r) for r in recorder.raw[:first])


def test_transfer_encoding_in_http10_is_refused(proxy: SidecarThread, recorder: Recorder) -> None:
    answer = raw(proxy.port, b"POST /svc/x HTTP/1.0\r\nX-Shard-Key: 1\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    (status, head, body), = responses(answer)
    assert status == 400 and b"Connection: close" in head
    assert "Transfer-Encoding" in json.loads(body)["message"]
    assert recorder.received_bytes == 0


def test_bad_chunk_mid_body_aborts_the_upstream_connection(proxy: SidecarThread,
                                                          recorder: Recorder) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"POST /svc/up HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.2)
        sock.sendall(b"-5\r\nhello\r\n")
        answer = sock.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 400") and b"Connection: close" in answer
    # The next request goes on a new upstream connection: the cut one was not pooled.
    raw(proxy.port, b"GET /svc/x HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n"
        b"Connection: close\r\n\r\n")
    wait_for_requests(recorder, 1)
    assert [(r.target, r.connection) for r in recorder.requests] == [(b"/x", 2)]


@pytest.mark.parametrize("head", [
    pytest.param(b"GET /svc/ws HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 1\r\n"
                 b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", id="upgrade"),
    pytest.param(b"GET /svc/ws HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 1\r\n"
                 b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n", id="upgrade-last"),
])
def test_no_tunnels_an_upgrade_is_answered_once_then_closed(head: bytes, proxy: SidecarThread,
                                                           recorder: Recorder) -> None:
    """An upgrade request is served as plain HTTP/1.1 without its Upgrade, and the
    connection closes after it: what follows it is never read as a request."""
    started = time.monotonic()
    answer = raw(proxy.port, head + b"GET /svc/next HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 1\r\n\r\n")
    assert time.monotonic() - started < 3, "the connection was not closed after the answer"
    (status, got, _), = responses(answer)
    assert status == 200 and b"Connection: close" in got
    wait_for_requests(recorder, 1)
    assert [r.target for r in recorder.requests] == [b"/ws"]
    assert recorder.requests[0].values(b"upgrade") == []
