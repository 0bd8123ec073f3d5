"""Real gRPC backends (grpcio, generic handlers on raw bytes) that check key ownership.

Each backend is ordinal i of N: it answers FAILED_PRECONDITION to any call whose
``x-shard-ordinal`` is not i, or whose key (``x-shard-key``) the modulo function
does not give to i (in slot mode: whose fencing fields are not its key's slot, or
whose slot is not i's), so a misrouted call fails loudly. Methods of ``/shard.Echo/``:

- ``Unary``: answers ``{"ordinal": i, "key": ..., "size": len(request)}``.
- ``ServerStream``: request ``b"COUNT:SIZE[:DELAY]"``: COUNT messages of SIZE bytes.
- ``ClientStream``: answers the number of messages and bytes received.
- ``Bidi``: echoes each message, prefixed with the ordinal.
- ``Sleep``: request ``b"SECONDS"``: answers after that long (cancellation recorded).
- ``Hold``: a server stream that sends one message, then waits to be cancelled.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from sidecar.shardfn import ordinal_for

SERVICE = "shard.Echo"


class GrpcBackend:
    def __init__(self, ordinal: int, port: int = 0, host: str = "127.0.0.1",
                 owners: list[int] | None = None) -> None:
        self.ordinal = ordinal
        #: Slot mode: slot -> owner; a call must carry the fencing fields of its key's
        #: slot, and that slot must be this ordinal's.
        self.owners = owners
        self.port = port
        self.host = host
        self.calls: list[tuple[str, str]] = []
        self.cancelled: list[str] = []
        self.metadata: list[dict[str, str]] = []
        self.loop = asyncio.new_event_loop()
        self.server: grpc.aio.Server | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> GrpcBackend:
        self.run(self._start())
        return self

    async def _start(self) -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Sleep": grpc.unary_unary_rpc_method_handler(self.sleep),
            "Hold": grpc.unary_stream_rpc_method_handler(self.hold),
        }),))
        self.port = server.add_insecure_port(self.address)
        await server.start()
        self.server = server

    def stop(self, grace: float | None = None) -> None:
        if self.server is not None:
            self.run(self.server.stop(grace))
            self.server = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def check(self, context: grpc.aio.ServicerContext, method: str) -> str:
        """The call's key, once it is known to be this ordinal's; else FAILED_PRECONDITION."""
        md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.metadata.append(md)
        key = md.get("x-shard-key", "")
        told, count = md.get("x-shard-ordinal"), md.get("x-shard-count", "0")
        owner = ordinal_for(key, "modulo", int(count)) if key and count.isdigit() and \
            int(count) > 0 else None
        if self.owners is not None:
            slot = ordinal_for(key, "modulo", len(self.owners)) if key else -1
            fenced = md.get("x-shard-slot") == str(slot) and "x-shard-count" not in md and \
                md.get("x-shard-slots") == str(len(self.owners)) and \
                (md.get("x-shard-epoch") or "").isdigit()
            owner = self.owners[slot] if fenced else None
        if told != str(self.ordinal) or owner != self.ordinal:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"key '{key}' is not ordinal {self.ordinal}'s (x-shard-ordinal "
                                f"{told}, owner {owner})")
        self.calls.append((method, key))
        return key

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        key = await self.check(context, "Unary")
        return json.dumps({"ordinal": self.ordinal, "key": key, "size": len(request)}).encode()

    async def server_stream(self, request: bytes, context: grpc.aio.ServicerContext
                            ) -> AsyncIterator[bytes]:
        await self.check(context, "ServerStream")
        parts = request.decode().split(":")
        count, size = int(parts[0]), int(parts[1])
        delay = float(parts[2]) if len(parts) > 2 else 0.0
        chunk = bytes([self.ordinal]) * size
        for _ in range(count):
            yield chunk
            if delay:
                await asyncio.sleep(delay)

    async def client_stream(self, requests: AsyncIterator[bytes],
                            context: grpc.aio.ServicerContext) -> bytes:
        await self.check(context, "ClientStream")
        n = total = 0
        async for message in requests:
            n += 1
            total += len(message)
        return json.dumps({"ordinal": self.ordinal, "messages": n, "bytes": total}).encode()

    async def bidi(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[bytes]:
        await self.check(context, "Bidi")
        async for message in requests:
            yield b"%d:" % self.ordinal + message

    async def sleep(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        key = await self.check(context, "Sleep")
        try:
            await asyncio.sleep(float(request.decode()))
        except asyncio.CancelledError:
            self.cancelled.append(key)
            raise
        return b"slept"

    async def hold(self, request: bytes, context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[bytes]:
        key = await self.check(context, "Hold")
        yield b"holding"
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.append(key)
            raise


def start_grpc_backends(n: int) -> list[GrpcBackend]:
    return [GrpcBackend(i).start() for i in range(n)]


def owner(key: str, count: int) -> int:
    return ordinal_for(key, "modulo", count)
