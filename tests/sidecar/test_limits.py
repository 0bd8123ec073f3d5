"""Timeouts, truncation and the connection cap: every way a stalled or broken peer ends."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.sidecar.backends import Backend
from tests.sidecar.harness import SidecarThread

Handler = Callable[[socket.socket], None]


class RawBackend:
    """A backend that runs ``handler`` on each accepted socket (a thread each)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.handler(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_response(sock: socket.socket) -> bytes:
    """The head of one Content-Length response; its body is read and dropped."""
    data = read_head(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def read_all(sock: socket.socket, limit: float) -> tuple[bytes, bool]:
    """Everything until the peer closes: (bytes, closed before ``limit`` seconds)."""
    sock.settimeout(limit)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        return b"".join(chunks), False
    except ConnectionResetError:
        pass
    return b"".join(chunks), True


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def raw_backend() -> Iterator[Callable[[Handler], RawBackend]]:
    made: list[RawBackend] = []

    def make(handler: Handler) -> RawBackend:
        made.append(RawBackend(handler))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


def get(port: int, path: str = "/svc/x", extra: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n" +
                 extra + b"\r\n")
    return sock


# --- 3: a backend that stalls after its response head --------------------------------


@pytest.mark.parametrize("framing", [b"Content-Length: 1000\r\n",
                                     b"Transfer-Encoding: chunked\r\n"])
def test_a_backend_stalling_mid_body_is_cut_after_the_route_timeout(
        framing: bytes, raw_backend: Callable[[Handler], RawBackend],
        make_sidecar: Callable[..., SidecarThread]) -> None:
    release = threading.Event()

    def stall(conn: socket.socket) -> None:
        read_head(conn)
        body = b"a" * 10
        if b"chunked" in framing:
            body = b"a\r\n" + body + b"\r\n"
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n" + body)
        release.wait(20)

    backend = raw_backend(stall)
    sidecar = make_sidecar("--route", f"svc={backend.address}", "--timeout", "500ms",
                           "--client-idle-timeout", "0.3", "--static-probe", "0")
    started = time.monotonic()
    with get(sidecar.port) as sock:
        data, closed = read_all(sock, 5)
    release.set()
    assert closed, "the client connection was held open by a stalled backend"
    assert 0.4 < time.monotonic() - started < 3
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    if b"chunked" in framing:
        assert body == b"a\r\n" + b"a" * 10 + b"\r\n"  # no terminating chunk
    else:
        assert body == b"a" * 10  # fewer than Content-Length
    assert sidecar.call(lambda: len(sidecar.sidecar.ctx.connections)) == 0


def test_a_backend_stalling_before_its_head_is_504(
        raw_backend: Callable[[Handler], RawBackend],
        make_sidecar: Callable[..., SidecarThread]) -> None:
    def silent(conn: socket.socket) -> None:
        read_head(conn)
        time.sleep(5)

    backend = raw_backend(silent)
    sidecar = make_sidecar("--route", f"svc={backend.address}", "--timeout", "300ms",
                           "--static-probe", "0")
    with get(sidecar.port) as sock:
        data, _ = read_all(sock, 0.2 + 2)
    assert data.startswith(b"HTTP/1.1 504")
    assert json.loads(data.partition(b"\r\n\r\n")[2])["error"] == "upstream_timeout"


def test_a_client_that_stops_reading_is_closed(
        backends: list[Backend], make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", f"svc={backends[0].address}",
                           "--client-body-timeout", "0.5", "--static-probe", "0")
    with get(sidecar.port, "/svc/bytes/200000000") as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 5
        while sidecar.call(lambda: len(sidecar.sidecar.ctx.connections)) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        assert sidecar.call(lambda: len(sidecar.sidecar.ctx.connections)) == 0


def test_an_upload_that_stalls_gets_408_and_a_close(
        backends: list[Backend], make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", f"svc={backends[0].address}",
                           "--client-body-timeout", "0.5", "--static-probe", "0")
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=10) as sock:
        sock.sendall(b"POST /svc/up HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n"
                     b"Content-Length: 100\r\n\r\n0123456789")
        started = time.monotonic()
        data, closed = read_all(sock, 5)
    assert closed and 0.4 < time.monotonic() - started < 3
    assert data.startswith(b"HTTP/1.1 408")
    error = json.loads(data.partition(b"\r\n\r\n")[2])
    assert error["error"] == "client_timeout" and "0.5s" in error["message"]



def test_one_sweep_tells_a_slow_head_a_stalled_body_and_an_idle_client_apart(
        backends: list[Backend], make_sidecar: Callable[..., SidecarThread]) -> None:
    """The head deadline (request_timeout), the body pause (client_timeout) and the
    idle timeout, all from the one client sweep, each on the connection it concerns."""
    sidecar = make_sidecar("--route", f"svc={backends[0].address}", "--static-probe", "0",
                           "--client-head-timeout", "0.6", "--client-body-timeout", "0.6",
                           "--client-idle-timeout", "5")
    port = sidecar.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as head, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as body, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
        body.sendall(b"POST /svc/up HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n"
                     b"Content-Length: 100\r\n\r\n0123456789")
        trickle = b"GET /svc/x HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 1\r\n"
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for i in range(20):  # one byte every 0.1 s: no gap reaches any timeout
                head.sendall(trickle[i:i + 1])
                time.sleep(0.1)
        head_data, head_closed = read_all(head, 3)
        body_data, body_closed = read_all(body, 3)
        assert time.monotonic() - started < 4
        idle.sendall(b"GET /svc/x HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 1\r\n\r\n")
        idle.settimeout(5)
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    assert head_closed and head_data.startswith(b"HTTP/1.1 408"), head_data
    assert json.loads(head_data.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"
    assert body_closed and body_data.startswith(b"HTTP/1.1 408"), body_data
    assert json.loads(body_data.partition(b"\r\n\r\n")[2])["error"] == "client_timeout"

# --- 7: a close-delimited body cut by a reset ----------------------------------------


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
def test_a_close_delimited_body_cut_by_a_reset_is_not_completed(
        version: bytes, raw_backend: Callable[[Handler], RawBackend],
        make_sidecar: Callable[..., SidecarThread]) -> None:
    def cut(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(version + b" 200 OK\r\nConnection: close\r\n\r\n" + b"b" * 100)
        time.sleep(0.2)
        reset(conn)

    backend = raw_backend(cut)
    sidecar = make_sidecar("--route", f"svc={backend.address}", "--static-probe", "0")
    with get(sidecar.port) as sock:
        data, closed = read_all(sock, 5)
    assert closed
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert not body.endswith(b"0\r\n\r\n"), "a cut body was relayed as complete"


def test_a_close_delimited_body_ended_by_a_fin_is_complete(
        raw_backend: Callable[[Handler], RawBackend],
        make_sidecar: Callable[..., SidecarThread]) -> None:
    def whole(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"b" * 100)
        conn.shutdown(socket.SHUT_WR)
        time.sleep(0.5)

    backend = raw_backend(whole)
    sidecar = make_sidecar("--route", f"svc={backend.address}", "--static-probe", "0")
    with get(sidecar.port) as sock:
        sock.settimeout(5)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += sock.recv(65536)
    assert data.endswith(b"64\r\n" + b"b" * 100 + b"\r\n0\r\n\r\n")


# --- 9: the time to first byte starts when the request is sent --------------------------


def slow_upload(port: int, pieces: int, gap: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /svc/up HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (pieces * 10))
        for _ in range(pieces):
            time.sleep(gap)
            try:
                sock.sendall(b"0123456789")
            except OSError:
                break
        data, _ = read_all(sock, 5)
    return data


def test_a_slow_upload_does_not_count_against_the_upstream_timeout(
        backends: list[Backend], make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", f"svc={backends[0].address}", "--timeout", "500ms",
                           "--static-probe", "0")
    data = slow_upload(sidecar.port, 6, 0.25)  # 1.5 s of upload
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert json.loads(data.partition(b"\r\n\r\n")[2])["body_bytes"] == 60


def test_a_backend_answering_before_the_upload_ends(
        raw_backend: Callable[[Handler], RawBackend],
        make_sidecar: Callable[..., SidecarThread]) -> None:
    def early(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
        time.sleep(3)

    backend = raw_backend(early)
    sidecar = make_sidecar("--route", f"svc={backend.address}", "--timeout", "500ms",
                           "--static-probe", "0")
    data = slow_upload(sidecar.port, 6, 0.25)
    assert data.startswith(b"HTTP/1.1 403") and data.endswith(b"\r\n\r\nno")


# --- 6: the connection cap ------------------------------------------------------------


def test_effective_cap_keeps_a_reserve_of_file_descriptors() -> None:
    from sidecar.proxy import effective_max_connections

    assert effective_max_connections(1000, nofile=100_000) == 1000
    # Each client may hold an upstream connection too; 64 fds stay for probes and pools.
    assert effective_max_connections(1000, nofile=1024) == (1024 - 80) // 2
    assert effective_max_connections(1000, nofile=50) == 1


def test_connections_over_the_cap_get_503_and_the_others_keep_working(
        backends: list[Backend], make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", f"svc={backends[0].address}", "--max-connections", "4",
                           "--static-probe", "0")
    held = [get(sidecar.port) for _ in range(4)]
    for sock in held:
        assert read_response(sock).startswith(b"HTTP/1.1 200")
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as over:
        over.sendall(b"GET /svc/x HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n\r\n")
        data, closed = read_all(over, 5)
    assert closed and data.startswith(b"HTTP/1.1 503")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Retry-After: 1" in head and b"Connection: close" in head
    error = json.loads(body)
    assert error["error"] == "too_many_connections" and error["limit"] == 4
    # The connections within the cap still work, and a freed slot is usable again.
    time.sleep(0.1)
    held[0].sendall(b"GET /svc/y HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n\r\n")
    assert read_response(held[0]).startswith(b"HTTP/1.1 200")
    held.pop().close()
    time.sleep(0.2)
    with get(sidecar.port) as again:
        assert read_response(again).startswith(b"HTTP/1.1 200")
    for sock in held:
        sock.close()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_flood_of_connections_stays_under_the_memory_limit(
        backends: list[Backend], tmp_path: Path) -> None:
    """A real sidecar process, 3000 connections against a cap of 1000."""
    port = socket.create_server(("127.0.0.1", 0))
    listen = port.getsockname()[1]
    port.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardmesh", "sidecar", "--route",
         f"svc={backends[0].address}", "--listen", f"127.0.0.1:{listen}", "--admin", "off",
         "--max-connections", "1000", "--static-probe", "0", "--log-level", "error"],
        cwd=Path(__file__).resolve().parents[2], env={**os.environ})
    socks: list[socket.socket] = []
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        base = _rss_mib(proc.pid)
        refused = 0
        for i in range(3000):
            sock = socket.create_connection(("127.0.0.1", listen), timeout=5)
            sock.sendall(b"GET /svc/x HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n\r\n")
            socks.append(sock)
            if i % 500 == 499:
                time.sleep(0.2)
        for sock in socks:
            head = read_response(sock)
            refused += head.startswith(b"HTTP/1.1 503")
        rss = _rss_mib(proc.pid)
        assert refused == 2000, refused
        assert rss < 100, f"RSS {rss:.1f} MiB (from {base:.1f})"
        # In-cap traffic still works with the cap reached.
        socks[0].sendall(b"GET /svc/y HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n\r\n")
        assert read_response(socks[0]).startswith(b"HTTP/1.1 200")
    finally:
        for sock in socks:
            sock.close()
        proc.terminate()
        proc.wait(20)


def test_the_annotation_sets_the_cap_in_kubernetes_mode(tmp_path: Path) -> None:
    from sidecar.annotations import MAX_CONNECTIONS
    from sidecar.app import Sidecar
    from sidecar.downward import format_downward_file
    from tests.sidecar.harness import settings_from_args

    path = tmp_path / "annotations"
    path.write_text(format_downward_file({MAX_CONNECTIONS: "7"}))
    settings = settings_from_args(["--annotations-file", str(path), "--max-connections", "50"],
                                  {"POD_NAMESPACE": "shop"})
    sidecar = Sidecar(settings)
    source = sidecar.source
    source.reload()  # type: ignore[attr-defined]
    assert sidecar.ctx.max_connections == 7
    path.write_text(format_downward_file({}))
    source.reload()  # type: ignore[attr-defined]
    assert sidecar.ctx.max_connections == 50  # back to the flag once the annotation is gone


@pytest.mark.parametrize(("flag", "value"), [("--max-connections", "0"),
                                             ("--client-body-timeout", "0"),
                                             ("--connect-timeout", "-1")])
def test_bad_limit_flags_name_the_flag_and_value(flag: str, value: str) -> None:
    from sidecar.settings import SettingsError
    from tests.sidecar.harness import settings_from_args

    with pytest.raises(SettingsError, match=f"invalid value '{value}(.0)?' for {flag}"):
        settings_from_args(["--route", "svc=127.0.0.1:1", flag, value])


def slow_readers(port: int, count: int, size: int = 50_000_000) -> list[socket.socket]:
    """Clients that ask for a large body and read none of it."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /svc/bytes/%d HTTP/1.1\r\nHost: x\r\nX-Shard-Key: 0\r\n\r\n" % size)
        socks.append(sock)
    return socks


def test_slow_readers_over_the_buffer_budget_are_cut(
        backends: list[Backend], make_sidecar: Callable[..., SidecarThread]) -> None:
    from sidecar.proxy import BUFFER_WEIGHT

    budget = 1 << 20
    sidecar = make_sidecar("--route", f"svc={backends[0].address}", "--static-probe", "0",
                           "--buffer-budget", str(budget))
    ctx = sidecar.sidecar.ctx
    socks = slow_readers(sidecar.port, 8)
    deadline = time.monotonic() + 10
    while sidecar.call(lambda: len(ctx.connections)) == len(socks) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert sidecar.call(lambda: ctx.buffered) <= budget
    assert sidecar.call(lambda: len(ctx.buffering)) <= budget // BUFFER_WEIGHT
    assert sidecar.call(lambda: len(ctx.connections)) < len(socks)  # some were cut
    for sock in socks:
        sock.close()


def test_slow_readers_cannot_take_the_memory_over_the_limit(backends: list[Backend]) -> None:
    """Without the budget, 300 clients that do not read a large response hold 179 MiB."""
    listen = socket.create_server(("127.0.0.1", 0))
    port = listen.getsockname()[1]
    listen.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardmesh", "sidecar", "--route", f"svc={backends[0].address}",
         "--listen", f"127.0.0.1:{port}", "--admin", "off", "--static-probe", "0",
         "--log-level", "error"], cwd=Path(__file__).resolve().parents[2])
    socks: list[socket.socket] = []
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            time.sleep(0.05)
        socks = slow_readers(port, 300)
        peak = 0.0
        for _ in range(40):
            time.sleep(0.2)
            peak = max(peak, _rss_mib(proc.pid))
        assert peak < 100, f"RSS reached {peak:.1f} MiB"
    finally:
        for sock in socks:
            sock.close()
        proc.terminate()
        proc.wait(20)


def test_the_readme_lists_every_limit_flag_with_its_default() -> None:
    from sidecar.cli import build_parser

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Limits and timeouts")[1].split("\n## ")[0]
    defaults = {a.option_strings[0]: a.default for a in build_parser()._actions
                if a.option_strings}
    for flag, default, shown in (
            ("--connect-timeout", 3.0, "3 s"), ("--timeout", "30s", "30 s"),
            ("--client-idle-timeout", 60.0, "60 s"), ("--client-head-timeout", 10.0, "10 s"),
            ("--client-body-timeout", 60.0, "60 s"),
            ("--max-connections", 1024, "1024"), ("--buffer-budget", 32 << 20, "32 MiB"),
            ("--max-json-body", 1 << 20, "1 MiB"), ("--drain-seconds", 15.0, "15 s")):
        row = next((line for line in table.splitlines() if f"`{flag}`" in line), "")
        assert row, f"{flag} is not in the README's limits table"
        assert defaults[flag] == default and f"| {shown}" in row, (flag, row)


def test_the_readme_lists_every_error_code() -> None:
    from sidecar.errors import CODES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Failure behaviour")[1].split("\n## ")[0]
    # shutting_down is defined but never answered: a draining sidecar closes instead.
    missing = [code for code in CODES if f"`{code}`" not in table and code != "shutting_down"]
    assert not missing, f"error codes missing from the README's Failure behaviour table: {missing}"
