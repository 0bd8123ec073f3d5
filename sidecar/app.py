"""Wiring: build the map, the pools and the listeners from ``Settings``, run, drain on SIGTERM.

``Sidecar`` is usable in-process (the tests start it on port 0 in a thread);
``run`` is the CLI entry point.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import math
import resource
import signal
import sys
import time
from typing import Protocol, cast

import sidecar
from sidecar.admin import AdminConnection
from sidecar.h1base import ClientBase
from sidecar.h1timeouts import close_idle, expire
from sidecar.metrics import Stats, StatsCollector, exposition, registry_for
from sidecar.proxy import ClientConnection, Context, effective_max_connections
from sidecar.settings import Settings, StaticRoute
from sidecar.shardmap import RouteState, Shard, ShardMap
from sidecar.upstream import Pools

log = logging.getLogger("shardmesh.sidecar")


def _hand_off_h2(conn: ClientBase, data: bytes) -> None:
    """A connection that opened with the HTTP/2 preface: ``h2front`` serves it from now
    on, imported when the first one comes (an HTTP/1.1-only sidecar never loads h2)."""
    from sidecar.h2front import take_over

    assert isinstance(conn, ClientConnection)
    take_over(conn, data)

class RouteSource(Protocol):
    """Fills the shard map: static addresses, or the Kubernetes watches."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class StaticSource:
    """``--route name=addr0,addr1``: ordinal i is at address i.

    Every ordinal starts ready. With no Kubernetes to say otherwise, a TCP
    connect probe every ``--static-probe`` seconds marks an ordinal that
    refuses connections not ready (503 shard_unavailable with Retry-After,
    like an unready pod) and ready again once it accepts them.
    """

    def __init__(self, settings: Settings, shard_map: ShardMap) -> None:
        self.settings, self.map = settings, shard_map
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.map.set_specs(r.spec for r in self.settings.static_routes)
        for route in self.settings.static_routes:
            self._publish(route, [True] * len(route.addresses))
        if self.settings.static_probe_seconds > 0:
            self.task = asyncio.get_running_loop().create_task(self._probe())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _publish(self, route: StaticRoute, ready: list[bool]) -> None:
        name = route.spec.name
        shards = [Shard(ordinal=i, ready=up, address=a, pod=f"{name}-{i}")
                  for i, (a, up) in enumerate(zip(route.addresses, ready, strict=True))]
        self.map.update(name, count=len(shards), shards=shards, slots=self.settings.static_slots)

    async def _probe(self) -> None:
        interval = self.settings.static_probe_seconds
        while True:
            await asyncio.sleep(interval)
            for route in self.settings.static_routes:
                ready = list(await asyncio.gather(
                    *(_accepts(a, min(interval, 1.0)) for a in route.addresses)))
                state = self.map.get(route.spec.name)
                if state is not None and [s.ready for s in state.shards] != ready:
                    log.warning("route %s: ready ordinals now %s", route.spec.name,
                                [i for i, up in enumerate(ready) if up])
                    self._publish(route, ready)


def return_freed_buffers() -> None:
    """Have glibc map buffers of 128 KiB and more (reads, bodies) on their own, so that
    freeing them returns the memory: by default it raises that threshold after the first
    free, and a burst of slow readers would leave its peak in RSS for good."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def raise_nofile() -> int:
    """Raise the soft file descriptor limit to the hard one; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


async def _accepts(address: tuple[str, int], timeout: float) -> bool:
    """Whether a TCP connection to ``address`` can be made (then closed at once)."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(*address)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


class Sidecar:
    def __init__(self, settings: Settings, source: RouteSource | None = None) -> None:
        self.settings = settings
        self.map = ShardMap()
        self.stats = Stats()
        self.pools = Pools(settings.pool_size, self.stats)
        self.ctx = Context(settings, self.map, self.pools, self.stats, _hand_off_h2)
        self.map.add_listener(self._map_changed)
        self.source = source if source is not None else self._default_source()
        self.registry = registry_for(StatsCollector(self.stats, lambda: self.map.generation,
                                                    self._sync_ages, self._epochs))
        extra = getattr(self.source, "collector", None)
        if callable(extra):  # the directory's staleness, when the source follows one
            self.registry.register(extra())
        self.servers: list[asyncio.Server] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.port = 0
        self.admin_port = 0
        self.started_at = time.monotonic()

    def _default_source(self) -> RouteSource:
        if self.settings.static:
            return StaticSource(self.settings, self.map)
        from sidecar.directory_source import Source

        return Source(self.settings, self.map, self.stats,
                      on_max_connections=self.set_max_connections)

    def _map_changed(self, old: RouteState | None, new: RouteState | None) -> None:
        state = new or old
        if state is None:
            return
        current = set() if new is None else {
            (s.ordinal, s.address) for s in new.shards[: new.count] if s.address is not None
        }
        self.pools.retain(state.spec.name, current)
        if new is not None and new.slot_problem and (old is None
                                                     or old.slot_problem != new.slot_problem):
            bad = self.stats.bad_slot_maps
            bad[(new.name, "")] = bad.get((new.name, ""), 0) + 1

    def _epochs(self) -> dict[str, int]:
        return {s.spec.name: s.slotmap.epoch for s in self.map.routes.values()
                if s.slotmap is not None}

    def _sync_ages(self) -> dict[str, float | None]:
        now = time.monotonic()
        return {s.spec.name: (now - s.synced_at) if s.synced else None
                for s in self.map.routes.values()}

    def health(self) -> tuple[bool, dict[str, object]]:
        return True, {"uptime_s": round(time.monotonic() - self.started_at, 1)}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        waiting = [s.spec.name for s in self.map.routes.values() if not s.synced]
        if self.ctx.draining:
            return False, {"reason": "draining"}
        if not getattr(self.source, "ready", True):
            return False, {"reason": "the annotations file has not been read yet"}
        return not waiting, {"unsynced_routes": waiting}

    def set_max_connections(self, annotated: int | None) -> None:
        """The cap: ``shard.io/max-connections`` if the pod sets it, else the flag, lowered
        to what the file descriptor limit allows with backends' descriptors kept free."""
        configured = self.settings.max_connections if annotated is None else annotated
        cap = effective_max_connections(configured, raise_nofile())
        if cap < configured:
            log.warning("connection cap lowered from %d to %d: the file descriptor limit "
                        "(ulimit -n) must hold a backend connection per client and a reserve",
                        configured, cap)
        self.ctx.max_connections = cap

    async def start(self) -> None:
        self.set_max_connections(None)
        loop = asyncio.get_running_loop()
        host, port = self.settings.listen
        server = await loop.create_server(lambda: ClientConnection(self.ctx), host, port,
                                          backlog=1024, reuse_address=True)
        self.servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        if self.settings.admin is not None:
            ahost, aport = self.settings.admin
            admin = await loop.create_server(
                lambda: AdminConnection(self.health, self.readiness,
                                        lambda: exposition(self.registry)),
                ahost, aport, reuse_address=True)
            self.servers.append(admin)
            self.admin_port = admin.sockets[0].getsockname()[1]
        self.tasks.append(loop.create_task(self._expire_timeouts()))
        self.tasks.append(loop.create_task(self._close_idle_clients()))
        await self.source.start()
        log.info("sidecar listening on %s:%d (admin %s, data plane %s)", host, self.port,
                 f"{self.settings.admin[0]}:{self.admin_port}" if self.settings.admin else "off",
                 "compiled" if sidecar.compiled() else "plain Python")

    async def _expire_timeouts(self) -> None:
        """Upstream timeouts: one sweep every 50 ms instead of a timer per request."""
        while True:
            await asyncio.sleep(0.05)
            expire(self.ctx, time.monotonic())

    async def _close_idle_clients(self) -> None:
        """The client side's timeouts (idle, head deadline, body pause, unread response):
        counters per connection, reset by the request path and bumped by a sweep here,
        so a request pays a store or two, not a timer."""
        idle = self.settings.client_idle_seconds
        head = self.settings.client_head_seconds
        body = self.settings.client_body_seconds
        interval = min(1.0, idle / 4, head / 4, body / 4)
        sweeps, body_sweeps = max(1, round(idle / interval)), max(1, round(body / interval))
        # A head starts between two sweeps: one more makes the deadline a minimum.
        head_sweeps = math.ceil(head / interval - 1e-9) + 1
        while True:
            await asyncio.sleep(interval)
            close_idle(self.ctx, sweeps, head_sweeps, body_sweeps, body)

    async def drain(self) -> None:
        """Stop accepting, let in-flight exchanges finish within the grace period, close."""
        self.ctx.draining = True
        self.servers[0].close()  # data listener: no new connections
        for conn in list(self.ctx.connections):
            cast(ClientConnection, conn).drain()
        if self.ctx.h2 is not None:
            self.ctx.h2.drain()  # GOAWAY: streams in flight finish, then each closes
        deadline = time.monotonic() + self.settings.drain_seconds
        while (self.ctx.connections or self.ctx.h2_connections()) and \
                time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.ctx.connections):
            conn.abort()
        await self.stop()

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for task in self.tasks:
            task.cancel()
        await self.source.stop()
        self.pools.close()
        if self.ctx.h2 is not None:
            self.ctx.h2.close()
        for conn in list(self.ctx.connections):
            conn.abort()


async def serve(settings: Settings) -> int:
    return_freed_buffers()
    sidecar = Sidecar(settings)
    await sidecar.start()
    # Start-up objects (the Kubernetes client's modules, mostly) never die: keep them out of
    # every future collection so gen-2 passes stay short under load.
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining for up to %gs", settings.drain_seconds)
    await sidecar.drain()
    return 0


def run(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvloop

    from sidecar.discovery import StartupError

    try:
        return uvloop.run(serve(settings))
    except (StartupError, OSError) as err:  # e.g. no kubeconfig, or the port is taken
        print(f"shardmesh sidecar: {err}", file=sys.stderr)
        return 1
