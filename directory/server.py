"""The directory's HTTPS endpoints, on asyncio streams (one task per connection).

- ``GET /v1/watch?namespace=&statefulset=[&source=&generation=]``: a chunked
  NDJSON stream: the current snapshot (unless the caller's source and generation
  are current), then one per change, and a heartbeat line when idle. The first
  line is a heartbeat carrying the CA bundle (``trust``), and so is the next
  line after the bundle changes (``directory.trust``).
- ``GET /v1/resolve?namespace=&statefulset=&key=[&strategy=]``: one key's owner.
- ``GET /v1/maps[?namespace=]``: every map held now that the caller may read.
- ``GET /v1/trust``: the CA bundle clients should trust (public: no token).
- ``/healthz``, ``/readyz``, ``/metrics``: no token needed.

This is the only place errors become HTTP statuses. A stream's end (the client
closing, or a write that stalls past ``write_timeout_s``) releases its informer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from directory import metrics
from directory.auth import Auth, Denied
from directory.httpwire import (
    MAX_HEAD,
    STREAM_HEAD,
    BadRequest,
    Request,
    chunk,
    error,
    json_response,
    parse_head,
    response,
)
from directory.hub import Entry, Hub, Subscriber, heartbeat_line
from directory.maps import MapKey
from directory.resolve import Refusal, resolve, strategy_of
from directory.settings import Settings
from directory.trust import Trust

log = logging.getLogger("shardmesh.directory.server")
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-.")


def map_key(query: dict[str, str]) -> MapKey:
    """The StatefulSet a request names; raises Refusal 400 naming the bad parameter."""
    values = []
    for param in ("namespace", "statefulset"):
        value = query.get(param, "")
        if not value or len(value) > 253 or not set(value) <= _NAME_CHARS:
            raise Refusal(400, "invalid_parameter",
                          f"query parameter '{param}' is {value[:60]!r}: "
                          "expected a Kubernetes object name")
        values.append(value)
    return MapKey(values[0], values[1])


class Directory:
    def __init__(self, settings: Settings, hub: Hub, auth: Auth,
                 ready: Callable[[], bool] = lambda: True, trust: Trust | None = None) -> None:
        self.settings, self.hub, self.auth, self.ready = settings, hub, auth, ready
        self.trust = trust if trust is not None else Trust("")
        self.streams = 0

    def trust_changed(self) -> None:
        """Wake every stream: each sends the new CA bundle on its next line."""
        for entry in self.hub.entries.values():
            for subscriber in entry.subscribers:
                subscriber.wake.set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                                  self.settings.request_timeout_s)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    writer.write(error(431, "head_too_large",
                                       f"request head over {MAX_HEAD} bytes", False))
                    return
                try:
                    request = parse_head(head)
                except BadRequest as err:
                    writer.write(error(400, "bad_request", str(err), False))
                    return
                if not await self.dispatch(request, reader, writer):
                    return
        except Exception:  # never let one connection's surprise end the server
            log.exception("connection failed")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.drain(), 1.0)
            writer.close()

    async def dispatch(self, request: Request, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> bool:
        """Answer one request; True when the connection may take another."""
        path, keep = request.path, request.keep_alive
        status = 200
        try:
            if request.method != "GET":
                status = 405
                writer.write(error(405, "method_not_allowed", "only GET is served", keep))
            elif path == "/healthz":
                writer.write(response(200, b"ok\n", "text/plain", keep))
            elif path == "/readyz":
                status = 200 if self.ready() else 503
                writer.write(response(status, b"ok\n" if status == 200 else b"not ready\n",
                                      "text/plain", keep))
            elif path == "/metrics":
                body, content_type = metrics.exposition()
                writer.write(response(200, body, content_type, keep))
            elif path == "/v1/watch":
                await self.watch(request, reader, writer)
                return False
            elif path == "/v1/resolve":
                writer.write(json_response(200, await self.resolve(request), keep))
            elif path == "/v1/maps":
                writer.write(json_response(200, await self.maps(request), keep))
            elif path == "/v1/trust":
                writer.write(json_response(200, self.trust.describe(), keep))
            else:
                status = 404
                writer.write(error(404, "not_found", f"no such path '{path[:100]}'", keep))
        except Refusal as err:
            status = err.status
            writer.write(error(err.status, err.code, err.message, keep))
        except Denied as err:
            status = err.status
            writer.write(json_response(err.status, err.body(), keep))
        finally:
            metrics.REQUESTS.labels(_path_label(path), str(status)).inc()
        await asyncio.wait_for(writer.drain(), self.settings.write_timeout_s)
        return keep

    async def _allowed(self, request: Request, key: MapKey, verb: str) -> None:
        user = await self.auth.authenticate(request.headers.get("authorization"))
        await self.auth.authorize(user, key, verb)

    # --- the stream --------------------------------------------------------------

    async def watch(self, request: Request, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        key = map_key(request.query)
        await self._allowed(request, key, "watch")
        if self.streams >= self.settings.max_subscribers:
            raise Refusal(503, "too_many_subscribers",
                          f"this replica serves {self.streams} streams already "
                          f"(--max-subscribers {self.settings.max_subscribers})")
        entry = self.hub.acquire(key)
        subscriber = Subscriber()
        entry.subscribers.add(subscriber)
        self.streams += 1
        metrics.SUBSCRIBERS.inc()
        try:
            writer.write(STREAM_HEAD)
            trust = self.trust.version
            writer.write(chunk(heartbeat_line(self.hub.source, entry.generation,
                                              entry.map is not None, self.trust.pem)))
            if entry.map is not None and not self._current(request, entry):
                subscriber.offer(entry.line, 0.0)  # the snapshot: not an event to time
            await self._pump(entry, subscriber, reader, writer, trust)
        finally:
            entry.subscribers.discard(subscriber)
            self.hub.release(entry)
            self.streams -= 1
            metrics.SUBSCRIBERS.dec()

    def _current(self, request: Request, entry: Entry) -> bool:
        """Whether the caller already holds this map's current generation."""
        return (request.query.get("source") == self.hub.source
                and request.query.get("generation") == str(entry.generation))

    async def _pump(self, entry: Entry, subscriber: Subscriber, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, trust: str) -> None:
        closed = asyncio.ensure_future(reader.read(1))  # EOF (or junk): the client is gone
        try:
            while not closed.done():
                woken = asyncio.ensure_future(subscriber.wake.wait())
                await asyncio.wait({woken, closed}, timeout=self.settings.heartbeat_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                if closed.done():
                    return
                item = subscriber.take()
                if item is None or trust != self.trust.version:
                    send = self.trust.pem if trust != self.trust.version else ""
                    trust = self.trust.version
                    line = heartbeat_line(self.hub.source, entry.generation,
                                          entry.map is not None, send)
                    writer.write(chunk(line))
                    await asyncio.wait_for(writer.drain(), self.settings.write_timeout_s)
                    if item is None:
                        continue
                line, arrived = item
                writer.write(chunk(line))
                await asyncio.wait_for(writer.drain(), self.settings.write_timeout_s)
                metrics.FANOUT.inc()
                if arrived:
                    metrics.PROPAGATION.observe(time.monotonic() - arrived)
        except (TimeoutError, ConnectionError):
            return
        finally:
            closed.cancel()

    # --- one-shot answers ------------------------------------------------------------

    async def resolve(self, request: Request) -> dict[str, object]:
        key = map_key(request.query)
        strategy = strategy_of(request.query.get("strategy"))
        await self._allowed(request, key, "get")
        entry = self.hub.acquire(key)
        try:
            try:
                await asyncio.wait_for(entry.synced.wait(), self.settings.resolve_wait_s)
            except TimeoutError:
                raise Refusal(503, "shard_map_not_ready",
                              f"no map of statefulset {key} within "
                              f"{self.settings.resolve_wait_s:g}s (the API server is slow or "
                              "unreachable)") from None
            assert entry.map is not None
            answer = resolve(entry.map, request.query.get("key", ""), strategy)
            answer["generation"] = entry.generation
            return answer
        finally:
            self.hub.release(entry)

    async def maps(self, request: Request) -> dict[str, object]:
        user = await self.auth.authenticate(request.headers.get("authorization"))
        wanted = request.query.get("namespace")
        shown = []
        for key, entry in sorted(self.hub.entries.items(), key=lambda kv: str(kv[0])):
            if wanted and key.namespace != wanted:
                continue
            try:
                await self.auth.authorize(user, key, "get")
            except Denied as err:
                if err.status == 403:
                    continue  # never another namespace's map: not even that it is watched
                raise
            shown.append(self.hub.describe(entry))
        return {"source": self.hub.source, "informers": len(self.hub.entries),
                "subscribers": self.streams, "maps": shown}


def _path_label(path: str) -> str:
    known = ("/healthz", "/readyz", "/metrics", "/v1/watch", "/v1/resolve", "/v1/maps",
             "/v1/trust")
    return path if path in known else "other"
