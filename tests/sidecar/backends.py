"""Real HTTP/1.1 backends on 127.0.0.1 for the sidecar tests (one per ordinal).

Each backend knows its ordinal and answers according to the path:

- ``/sleep/<ms>``: answer after that long.
- ``/bytes/<n>``: a body of n bytes (Content-Length); ``/chunked/<n>`` the same, chunked;
  ``/eof/<n>``: the same without framing (the close ends it).
- ``/status/<code>``: that status with no body.
- ``/close``: answer with ``Connection: close``; ``/hangup``: close without answering.
- anything else: JSON describing the request (method, path, headers, body size
  and sha256, the ordinal this backend serves, the connection number).

Request bodies are read streaming (Content-Length or chunked) and only hashed,
so uploads of hundreds of MB use no memory here either.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_BLOCK = 64 * 1024


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body_bytes: int
    connection: int


@dataclass
class Backend:
    ordinal: int
    host: str = "127.0.0.1"
    port: int = 0
    #: When set, refuse the request unless X-Shard-Ordinal matches and X-Shard-Count is this.
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> Backend:
        backend = self

        class Handler(_Handler):
            owner = backend

        self.server = _Server((self.host, self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    owner: Backend
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle + delayed ACK
        # add 40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.owner.lock:
            self.owner.connections += 1
            self.connection_number = self.owner.connections

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _read_body(self) -> tuple[int, str]:
        digest, total = hashlib.sha256(), 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                self._read_exact(size, digest)
                total += size
                self.rfile.readline()
        else:
            total = int(self.headers.get("Content-Length") or 0)
            self._read_exact(total, digest)
        return total, digest.hexdigest()

    def _read_exact(self, remaining: int, digest: Any) -> None:
        """Read ``remaining`` body bytes into ``digest`` in bounded blocks."""
        while remaining:
            data = self.rfile.read(min(remaining, _BLOCK))
            if not data:
                raise ConnectionError("body cut short")
            digest.update(data)
            remaining -= len(data)

    def _any(self) -> None:
        owner = self.owner
        path = self.path
        if path == "/hangup":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        size, sha = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        with owner.lock:
            owner.seen.append(Seen(self.command, path, headers, size, self.connection_number))
        parts = path.strip("/").split("/")
        if parts[0] == "sleep":
            time.sleep(int(parts[1]) / 1000)
        if parts[0] in ("bytes", "chunked", "eof"):
            self._stream(parts[0], int(parts[1]))
            return
        if parts[0] == "status":
            self.send_response(int(parts[1]))
            self.send_header("X-Backend-Ordinal", str(owner.ordinal))
            self.end_headers()
            return
        body = json.dumps({
            "ordinal": owner.ordinal, "method": self.command, "path": path, "headers": headers,
            "body_bytes": size, "body_sha256": sha, "connection": self.connection_number,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Backend-Ordinal", str(owner.ordinal))
        self.send_header("Keep-Alive", "timeout=5")  # hop-by-hop: the sidecar must drop it
        if path == "/close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, mode: str, size: int) -> None:
        self.send_response(200)
        self.send_header("X-Backend-Ordinal", str(self.owner.ordinal))
        if mode == "bytes":
            self.send_header("Content-Length", str(size))
        elif mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        block = b"x" * _BLOCK
        remaining = size
        while remaining:
            data = block[: min(remaining, _BLOCK)]
            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data) if mode == "chunked" else data)
            remaining -= len(data)
        if mode == "chunked":
            self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _any


def start_backends(count: int, host: str = "127.0.0.1") -> list[Backend]:
    return [Backend(ordinal=i, host=host).start() for i in range(count)]
