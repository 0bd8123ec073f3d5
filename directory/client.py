"""The consuming side of the directory, for asyncio (and uvloop): no dependency beyond the stdlib.

``stream`` opens one subscription and yields its messages (snapshots and
heartbeats) until the connection ends; ``follow`` reconnects with jittered
backoff, resuming from the last (source, generation), and yields only new
snapshots, never one twice. ``resolve`` asks for one key's owner.
``directory.maps.from_wire`` turns a snapshot's map into the arguments of
``sidecar.discovery.snapshot`` and a slot map.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

Obj = dict[str, Any]
MAX_LINE = 16 * 1024 * 1024  # a map of thousands of pods stays far below this


class DirectoryError(Exception):
    """The directory answered with an error (``status``, and its JSON ``body``)."""

    def __init__(self, status: int, body: Obj) -> None:
        super().__init__(f"directory answered {status}: {body.get('error')}: "
                         f"{body.get('message')}")
        self.status, self.body = status, body


@dataclass(frozen=True)
class Endpoint:
    """Where the directory is and how to prove who we are."""

    url: str  # https://shardmesh-directory.shardmesh-system.svc:443
    token: str
    ssl: ssl.SSLContext | None = None  # None: plain TCP (tests only)

    def address(self) -> tuple[str, int, str]:
        parts = urlsplit(self.url)
        host = parts.hostname or "localhost"
        return host, parts.port or (443 if parts.scheme == "https" else 80), host


def client_context(ca_pem: bytes | str) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem.decode() if isinstance(ca_pem, bytes)
                                         else ca_pem)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def _request(endpoint: Endpoint, path: str, query: dict[str, str],
                   timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int,
                                             dict[str, str]]:
    host, port, server_name = endpoint.address()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        host, port, ssl=endpoint.ssl, server_hostname=server_name if endpoint.ssl else None,
        limit=MAX_LINE), timeout)
    target = f"{path}?{urlencode(query)}"
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
                 f"Authorization: Bearer {endpoint.token}\r\nAccept: application/json\r\n"
                 "\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return reader, writer, status, headers


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> Obj:
    data = await reader.readexactly(int(headers.get("content-length", "0")))
    try:
        doc = json.loads(data or b"{}")
    except ValueError:
        doc = {"error": "bad_response", "message": data[:200].decode("latin-1")}
    return doc if isinstance(doc, dict) else {"error": "bad_response", "message": str(doc)}


async def resolve(endpoint: Endpoint, namespace: str, statefulset: str, key: str,
                  strategy: str | None = None, timeout: float = 10.0) -> Obj:
    query = {"namespace": namespace, "statefulset": statefulset, "key": key}
    if strategy:
        query["strategy"] = strategy
    reader, writer, status, headers = await _request(endpoint, "/v1/resolve", query, timeout)
    try:
        doc = await asyncio.wait_for(_body(reader, headers), timeout)
    finally:
        writer.close()
    if status != 200:
        raise DirectoryError(status, doc)
    return doc


async def stream(endpoint: Endpoint, namespace: str, statefulset: str,
                 source: str | None = None, generation: int | None = None,
                 idle_timeout: float = 35.0) -> AsyncIterator[Obj]:
    """One subscription's messages. Ends when the server closes; raises ``DirectoryError``
    on a refusal and ``TimeoutError`` when nothing (not even a heartbeat) arrives for
    ``idle_timeout`` seconds."""
    query = {"namespace": namespace, "statefulset": statefulset}
    if source is not None and generation is not None:
        query.update(source=source, generation=str(generation))
    reader, writer, status, headers = await _request(endpoint, "/v1/watch", query,
                                                     idle_timeout)
    try:
        if status != 200:
            raise DirectoryError(status, await _body(reader, headers))
        pending = b""
        while True:
            size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), idle_timeout)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return
            data = await asyncio.wait_for(reader.readexactly(size + 2), idle_timeout)
            pending += data[:-2]
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)
    finally:
        writer.close()


async def follow(endpoint: Endpoint, namespace: str, statefulset: str,
                 backoff: tuple[float, float] = (0.2, 5.0),
                 idle_timeout: float = 35.0) -> AsyncIterator[Obj]:
    """Snapshots, for ever: reconnects (resuming) after any failure but a 401/403."""
    source: str | None = None
    generation: int | None = None
    delay = backoff[0]
    while True:
        try:
            async for message in stream(endpoint, namespace, statefulset, source, generation,
                                        idle_timeout):
                delay = backoff[0]
                if message.get("type") != "snapshot":
                    continue
                if (message.get("source"), message.get("generation")) == (source, generation):
                    continue
                source, generation = message.get("source"), message.get("generation")
                yield message
        except DirectoryError as err:
            if err.status in (400, 401, 403):
                raise
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            pass
        await asyncio.sleep(random.uniform(delay / 2, delay))
        delay = min(delay * 2, backoff[1])
