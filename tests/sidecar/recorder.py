"""A backend that records exactly what reached it, byte for byte, for the hardening tests.

Unlike tests.sidecar.backends (http.server, which folds repeated headers and
reads only what it understands), this one keeps every header field line in
order, the framing of the body, and every byte received on every connection,
so a test can assert that *nothing* of a refused request reached it. It parses
with httptools and answers each request ``200`` with a small body.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

import httptools


@dataclass
class Received:
    method: bytes
    target: bytes
    version: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool
    #: Fields received after the last chunk (the sidecar drops them: none expected).
    trailers: list[tuple[bytes, bytes]]
    connection: int

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


@dataclass
class Recorder:
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    #: Every byte received, per connection (in accept order).
    raw: list[bytearray] = field(default_factory=list)
    #: Connections that sent bytes httptools could not parse.
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: socket.socket | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def received_bytes(self) -> int:
        with self.lock:
            return sum(len(r) for r in self.raw)

    def start(self) -> Recorder:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.host, 0))
        server.listen(64)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _accept(self) -> None:
        server = self._server
        assert server is not None
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with self.lock:
                self.raw.append(bytearray())
                number = len(self.raw)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        recorder = self

        class Parser:
            def __init__(self) -> None:
                self.reset()

            def reset(self) -> None:
                self.url = b""
                self.headers: list[tuple[bytes, bytes]] = []
                self.trailers: list[tuple[bytes, bytes]] = []
                self.body = bytearray()
                self.in_body = False

            def on_url(self, url: bytes) -> None:
                self.url += url

            def on_header(self, name: bytes, value: bytes) -> None:
                (self.trailers if self.in_body else self.headers).append((name, value))

            def on_headers_complete(self) -> None:
                self.in_body = True

            def on_body(self, body: bytes) -> None:
                self.body += body

            def on_message_complete(self) -> None:
                chunked = any(n.lower() == b"transfer-encoding" for n, _ in self.headers)
                got = Received(parser.get_method(), self.url, parser.get_http_version(),
                               self.headers, bytes(self.body), chunked, self.trailers, number)
                with recorder.lock:
                    recorder.requests.append(got)
                self.reset()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        callbacks = Parser()
        parser = httptools.HttpRequestParser(callbacks)
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self.lock:
                    self.raw[number - 1] += data
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError as err:
                    with self.lock:
                        self.errors.append(str(err))
                    return
                except OSError:
                    return
