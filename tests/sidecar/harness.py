"""Run a real ``Sidecar`` in-process on its own uvloop thread, and talk to it over sockets."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvloop

from sidecar.app import RouteSource, Sidecar
from sidecar.cli import build_parser
from sidecar.settings import Settings, build_settings

Headers = dict[str, str] | dict[str, str | bytes] | dict[str, bytes]


def settings_from_args(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    """Settings exactly as ``shardmesh sidecar ARGV`` would build them (ports default to 0)."""
    defaults = ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
    return build_settings(build_parser().parse_args(defaults + argv), env or {})


class SidecarThread:
    def __init__(self, settings: Settings,
                 source: Callable[[Sidecar], RouteSource] | None = None) -> None:
        self.settings = settings
        self.loop = uvloop.new_event_loop()
        self.sidecar = Sidecar(settings)
        if source is not None:
            self.sidecar.source = source(self.sidecar)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.sidecar.start())
        except BaseException as err:  # surfaced by start()
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> SidecarThread:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    @property
    def port(self) -> int:
        return self.sidecar.port

    @property
    def admin_port(self) -> int:
        return self.sidecar.admin_port

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the sidecar's loop and return its result."""
        done = threading.Event()
        box: list[Any] = []
        self.loop.call_soon_threadsafe(lambda: (box.append(fn()), done.set()))
        done.wait(5)
        return box[0]

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, drain: bool = False) -> None:
        if not self._thread.is_alive():
            return
        self.run(self.sidecar.drain() if drain else self.sidecar.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def request(port: int, method: str, path: str, headers: Headers | None = None,
            body: bytes | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def get_json(port: int, path: str, headers: Headers | None = None,
             ) -> tuple[int, dict[str, str], Any]:
    status, head, body = request(port, "GET", path, headers)
    return status, head, json.loads(body) if body else None


def raw(port: int, data: bytes, *, read_until_close: bool = True, timeout: float = 5) -> bytes:
    """Send raw bytes and read everything until the sidecar closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not read_until_close:
                    break
        except TimeoutError:
            pass
        return b"".join(chunks)
