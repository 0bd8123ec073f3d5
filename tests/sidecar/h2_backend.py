"""A small gRPC backend written on the h2 library, for what grpcio servers never do on
purpose: answer 421 (a slot it does not own, SPEC §6), send a GOAWAY whose last stream
id leaves requests unprocessed, or reset a stream with REFUSED_STREAM.

Every whole request it processes is answered as gRPC (status 0) with a JSON message:
its ordinal, the connection it came on, the key, the fencing fields and the request
size. A request whose ``x-shard-ordinal`` is not its own gets FAILED_PRECONDITION.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import h2.config
import h2.events
from h2.errors import ErrorCodes

from sidecar.h2wire import DrainingH2Connection
from sidecar.shardfn import ordinal_for


def grpc_frames(body: bytes) -> list[bytes]:
    """The messages of a gRPC body (5-byte prefix each)."""
    out, at = [], 0
    while at + 5 <= len(body):
        size = int.from_bytes(body[at + 1:at + 5], "big")
        out.append(body[at + 5:at + 5 + size])
        at += 5 + size
    return out


class H2Backend:
    """Ordinal ``ordinal``; in slot mode ``owners[slot]`` is each slot's owner, and a key
    of another owner's slot gets 421 with ``x-shard-epoch: epoch``."""

    def __init__(self, ordinal: int, owners: list[int] | None = None, epoch: int = 0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.ordinal, self.owners, self.epoch = ordinal, owners, epoch
        #: GOAWAY (once) when this many requests are whole on one connection: its last
        #: stream id is the first of them, which is answered; the others never are.
        self.goaway_after = 0
        self.goaway_sent = False
        #: The next ``refuse`` streams are reset with REFUSED_STREAM as they open.
        self.refuse = 0
        self.refused: list[int] = []
        self.misdirected: list[str] = []
        self.answered: list[dict[str, Any]] = []
        self.whole = 0
        self.connections = 0
        self.host, self.port = host, port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> asyncio.base_events.Server:
        server = await self.loop.create_server(lambda: _Conn(self), self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        return server

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class _Conn(asyncio.Protocol):
    def __init__(self, backend: H2Backend) -> None:
        self.backend = backend
        self.index = backend.connections
        backend.connections += 1
        self.h2 = DrainingH2Connection(h2.config.H2Configuration(client_side=False,
                                                                 header_encoding="utf-8"))
        self.heads: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.held: list[int] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        if self.transport is not None and (data := self.h2.data_to_send()):
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        backend = self.backend
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                sid = event.stream_id
                if backend.refuse > 0:
                    backend.refuse -= 1
                    backend.refused.append(sid)
                    self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
                    continue
                self.heads[sid] = dict(event.headers)  # type: ignore[arg-type]
                self.bodies[sid] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id in self.bodies:
                    self.bodies[event.stream_id] += event.data
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id in self.heads:
                backend.whole += 1
                self.request(event.stream_id)
        self.flush()

    def request(self, sid: int) -> None:
        backend = self.backend
        md = self.heads[sid]
        key = md.get("x-shard-key", "")
        if backend.owners is not None:
            slot = ordinal_for(key, "modulo", len(backend.owners))
            if backend.owners[slot] != backend.ordinal:
                backend.misdirected.append(key)
                self.h2.send_headers(sid, [(":status", "421"),
                                           ("x-shard-epoch", str(backend.epoch))],
                                     end_stream=True)
                return
        if backend.goaway_after and not backend.goaway_sent:
            self.held.append(sid)
            if len(self.held) < backend.goaway_after:
                return
            backend.goaway_sent = True
            first = min(self.held)
            self.h2.go_away_gracefully(first)  # the others are never processed
            self.answer(first)
            return
        self.answer(sid)

    def answer(self, sid: int) -> None:
        backend = self.backend
        md = self.heads[sid]
        if md.get("x-shard-ordinal") != str(backend.ordinal):
            self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc"),
                                       ("grpc-status", "9")], end_stream=True)
            return
        body = bytes(self.bodies[sid])
        seen = {k: md.get(k) for k in ("x-shard-key", "x-shard-slot", "x-shard-slots",
                                        "x-shard-epoch", "x-shard-ordinal", "x-shard-count")}
        record = {"ordinal": backend.ordinal, "conn": self.index, "sid": sid,
                  "messages": [len(m) for m in grpc_frames(body)], **seen}
        backend.answered.append(record)
        reply = json.dumps(record).encode()
        self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
        self.h2.send_data(sid, b"\0" + len(reply).to_bytes(4, "big") + reply)
        self.h2.send_headers(sid, [("grpc-status", "0")], end_stream=True)
