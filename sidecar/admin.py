"""The admin listener (15020): ``/healthz``, ``/readyz`` and ``/metrics``.

Tiny on purpose: one request per connection is plenty for probes and scrapes,
so this is a plain asyncio protocol that answers and closes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import cast

import httptools
from prometheus_client import CONTENT_TYPE_LATEST


class AdminConnection(asyncio.Protocol):
    def __init__(self, health: Callable[[], tuple[bool, dict[str, object]]],
                 ready: Callable[[], tuple[bool, dict[str, object]]],
                 metrics: Callable[[], bytes]) -> None:
        self.health, self.ready, self.metrics = health, ready, metrics
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.respond(400, "text/plain", b"bad request\n")

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > 8192:
            raise ValueError("request target too long")

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0]
        if path in (b"/healthz", b"/readyz"):
            ok, details = (self.health if path == b"/healthz" else self.ready)()
            body = json.dumps({"status": "ok" if ok else "not ready", **details}).encode()
            self.respond(200 if ok else 503, "application/json", body + b"\n")
        elif path == b"/metrics":
            self.respond(200, CONTENT_TYPE_LATEST, self.metrics())
        else:
            self.respond(404, "text/plain", b"not found: try /healthz, /readyz or /metrics\n")

    def respond(self, status: int, content_type: str, body: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}
        head = (f"HTTP/1.1 {status} {reason[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        self.transport.close()
