"""Route maps through the directory (SPEC §7): one stream per route, the same map code.

``Source`` is the Kubernetes-mode source: it reads the annotations file like
``discovery.KubernetesSource`` (which it extends) and gives each route its
map either from its own watches (``discovery.RouteWatch``, ``direct``) or from
a ``DirectoryStream`` (``directory``), as ``shard.io/discovery[.<route>]``
says; without the annotation, the directory when the sidecar was given one.

A ``DirectoryStream`` subscribes to its StatefulSet's map, feeds each snapshot
through ``directory.maps.from_wire`` to ``discovery.snapshot`` (the direct
mode's own pure function, with the route's port) and on to the shard map.
When the stream is lost it keeps the map, says it is stale (``/_shard/routes``,
``shardmesh_sidecar_directory_stale``) and reconnects with jittered backoff,
resuming from the last (source, generation); decisions live in
``directory_link``. Everything runs on the event loop: no threads.

``Trust`` holds the CAs the streams verify the directory with: the injected
bundle plus the last bundle a verified stream sent (the directory's CA
rotation, README "Troubleshooting"); a new one takes effect on the next connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import random
import ssl
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from directory.client import DirectoryError, Endpoint, client_context, stream
from sidecar import directory_link as dl
from sidecar import introspect
from sidecar.annotations import RouteSpec
from sidecar.discovery import KubernetesSource, RouteWatch, StartupError, api_client, snapshot
from sidecar.metrics import Stats
from sidecar.settings import Settings
from sidecar.shardmap import ShardMap

log = logging.getLogger("shardmesh.sidecar.directory")

Obj = dict[str, Any]


def iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="seconds")


class Trust:
    """The CAs a sidecar verifies the directory with: injected, then learned from it."""

    def __init__(self, injected: str) -> None:
        self.injected, self.learned = injected, ""
        self.context = client_context(injected) if injected else None
        self.cas = len(self.context.get_ca_certs()) if self.context is not None else 0

    def learn(self, bundle: str) -> None:
        """Trust ``bundle`` too (it came over a verified stream) from the next connect."""
        if bundle == self.learned or self.context is None:
            return
        try:
            client_context(bundle)  # alone first: it must hold a certificate itself
            context = client_context(self.injected + "\n" + bundle)
        except (ssl.SSLError, ValueError) as err:
            log.error("directory sent a CA bundle that does not load (%s): keeping the "
                      "CAs trusted now", err)
            return
        self.learned, self.context = bundle, context
        self.cas = len(context.get_ca_certs())
        log.info("directory CA bundle learned: %d CA(s) trusted for the next connections",
                 self.cas)


class DirectoryStream:
    """One route's subscription, for as long as the route uses the directory."""

    def __init__(self, spec: RouteSpec, settings: Settings, shard_map: ShardMap,
                 trust: Trust, counts: dict[str, int]) -> None:
        self.spec, self.settings, self.map = spec, settings, shard_map
        self.trust, self.counts = trust, counts
        self.link = dl.Link()
        self.url = settings.directory_urls[0] if settings.directory_urls else ""
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if not self.settings.directory_urls:
            self._unsynced("shard.io/discovery is 'directory' but this sidecar knows no "
                           "directory (no --directory-url: the webhook has none configured)")
            return
        self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        while True:
            self.url = dl.pick_url(self.settings.directory_urls, self.link.failures)
            reason, why = await self._follow(self.url)
            self.link = dl.lost(self.link, why)
            self.counts[reason] = self.counts.get(reason, 0) + 1
            log.warning("route %s: directory stream lost (%s): %s%s", self.spec.name, reason,
                        why, "; serving the last map, stale" if self.link.synced else "")
            self._unsynced(f"directory: {why}")
            # A CA mismatch does not mend itself either (the pod needs the current CA).
            cap = dl.REFUSED_CAP if reason in ("http_401", "http_403", "ca_mismatch") \
                else dl.BACKOFF_CAP
            await asyncio.sleep(dl.backoff_delay(self.link.failures, cap, random.uniform))

    async def _follow(self, url: str) -> tuple[str, str]:
        """Follow one stream until it ends: (reason, why) for the metric and the log."""
        path = self.settings.directory_token_file
        try:
            with open(path, encoding="utf-8") as handle:  # the kubelet rotates it
                token = handle.read().strip()
        except (OSError, UnicodeDecodeError) as err:
            return "token", f"cannot read the service-account token {path}: {err}"
        context = self.trust.context if url.startswith("https:") else None
        endpoint = Endpoint(url, token, context)
        source, generation = dl.resume(self.link)
        timeout = dl.idle_timeout(self.settings.directory_heartbeat_seconds)
        backend = self.spec.backend
        try:
            # An async generator (typed as an iterator): closed with the stream on cancel.
            lines = cast(AsyncGenerator[Obj, None], stream(
                endpoint, backend.namespace, backend.statefulset, source, generation, timeout))
            async with contextlib.aclosing(lines):
                async for message in lines:
                    if isinstance(message, dict):
                        self._line(message, verified=context is not None)
            return "closed", f"{url} closed the stream"
        except DirectoryError as err:
            missing = err.body.get("missing")
            more = f" (missing: {'; '.join(map(str, missing))})" if missing else ""
            return f"http_{err.status}", f"{url}: {err}{more}"
        except ssl.SSLCertVerificationError as err:
            return "ca_mismatch", dl.ca_mismatch(url, err.verify_message or str(err),
                                                 self.trust.cas)
        except TimeoutError:
            return "timeout", f"{url} sent nothing for {timeout:g}s " \
                              f"({dl.MISSED_HEARTBEATS} heartbeat intervals)"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as err:
            return "connection", f"{url}: {type(err).__name__}: {err}"
        except Exception as err:  # noqa: BLE001 - e.g. a garbled status line: never stop following
            log.exception("route %s: directory stream", self.spec.name)
            return "error", f"{url}: {type(err).__name__}: {err}"

    def _line(self, message: Obj, verified: bool = True) -> None:
        now = time.time()
        bundle = dl.trust_of(message)
        if bundle is not None and verified:
            self.trust.learn(bundle)
        if dl.confirms(self.link, message):
            self.link = dl.confirmed(self.link, self.link.applied or ("", 0), now)
            return
        key = dl.snapshot_key(message)
        if message.get("type") != "snapshot" or key is None:
            return
        if key != self.link.applied:
            inputs = dl.accept(self.spec, message.get("map"))
            if isinstance(inputs, str):
                log.error("route %s: %s", self.spec.name, inputs)
                self.link = dataclasses.replace(self.link, error=inputs)
                self._unsynced(inputs)
                return
            remote = str((message.get("map") or {}).get("slot_problem") or "")
            shot = snapshot(self.spec, dl.with_slots(inputs, remote), inputs.pods)
            if self._current():
                self.map.update(self.spec.name, count=shot.count, start=shot.start,
                                shards=shot.shards, problem=shot.problem, slots=shot.slots,
                                slot_error=shot.slot_error, keep_slots=shot.keep_slots)
        if self.link.stale_since is not None:
            log.info("route %s: directory map current again (source %s, generation %s)",
                     self.spec.name, *key)
        self.link = dl.confirmed(self.link, key, now)

    def _current(self) -> bool:
        state = self.map.get(self.spec.name)
        return state is not None and state.spec.backend == self.spec.backend

    def _unsynced(self, problem: str) -> None:
        """Say why a route that has no map yet has none; a map it has is kept."""
        state = self.map.get(self.spec.name)
        if self._current() and state is not None and not state.synced:
            self.map.update(self.spec.name, count=0, shards=(), problem=problem, synced=False,
                            keep_slots=True)

    def describe(self) -> Obj:
        return dl.describe(self.link, self.url, iso, self.trust.cas)


class Source(KubernetesSource):
    """Routes from the annotations file; each route's map from its watches or the directory."""

    def __init__(self, settings: Settings, shard_map: ShardMap, stats: Stats,
                 on_max_connections: Callable[[int | None], None] | None = None) -> None:
        super().__init__(settings, shard_map, stats, on_max_connections)
        self.streams: dict[str, DirectoryStream] = {}
        self.modes: dict[str, str] = {}
        #: Directory streams lost, by reason (connection, timeout, closed, http_403, ...).
        self.losses: dict[str, int] = {}
        self.trust = Trust(settings.directory_ca)

    async def start(self) -> None:
        introspect.register(self.map, self.route_fields)
        if not self.settings.directory:
            await super().start()  # as before the directory: a bad kubeconfig stops start-up
            return
        self.reload()
        self.task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        await super().stop()
        for directory_stream in self.streams.values():
            directory_stream.stop()
        self.streams.clear()
        introspect.unregister(self.map)

    def apply(self, specs: tuple[RouteSpec, ...]) -> None:
        rebuild = {s.name for s in self.map.set_specs(specs)}
        modes = {s.name: dl.mode_for(self.file.discovery.get(s.name), self.settings.directory)
                 for s in specs}
        for spec in specs:
            name = spec.name
            if name not in rebuild and modes[name] == self.modes.get(name):
                continue
            self._stop_route(name)
            if modes[name] == "directory":
                directory_stream = DirectoryStream(spec, self.settings, self.map, self.trust,
                                                   self.losses)
                self.streams[name] = directory_stream
                directory_stream.start()
                log.info("route %s: statefulset %s/%s through the directory", name,
                         spec.backend.namespace, spec.backend.statefulset)
            else:
                self._watch(spec)
        for name in [n for n in [*self.watches, *self.streams] if n not in modes]:
            self._stop_route(name)
        self.modes = modes

    def _stop_route(self, name: str) -> None:
        old: RouteWatch | DirectoryStream | None = self.watches.pop(name, None) or \
            self.streams.pop(name, None)
        if old is not None:
            old.stop()

    def _watch(self, spec: RouteSpec) -> None:
        if self.client is None:  # only made once a route goes direct
            try:
                self.client = api_client(self.settings)
            except StartupError as err:
                self.map.update(spec.name, count=0, shards=(), synced=False, keep_slots=True,
                                problem=f"shard.io/discovery is 'direct': {err}")
                return
        route_watch = RouteWatch(spec, self.client, self._publisher(spec), self.stats)
        self.watches[spec.name] = route_watch
        route_watch.start()
        log.info("route %s: watching statefulset %s/%s", spec.name, spec.backend.namespace,
                 spec.backend.statefulset)

    def route_fields(self) -> dict[str, Obj]:
        """``/_shard/routes`` fields of the routes that use the directory."""
        return {name: s.describe() for name, s in self.streams.items()}

    def collector(self) -> Collector:
        return DirectoryCollector(self)


class DirectoryCollector(Collector):
    def __init__(self, source: Source) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stale = GaugeMetricFamily("shardmesh_sidecar_directory_stale",
                                  "1 while a route serves a map the directory has not "
                                  "confirmed since its stream was lost", labels=["route"])
        age = GaugeMetricFamily("shardmesh_sidecar_directory_stale_seconds",
                                "Seconds since a stale route's map was last confirmed",
                                labels=["route"])
        connected = GaugeMetricFamily("shardmesh_sidecar_directory_connected",
                                      "1 while a route's directory stream confirms its map",
                                      labels=["route"])
        now = time.time()
        for name, directory_stream in self.source.streams.items():
            link = directory_stream.link
            stale.add_metric([name], 1.0 if dl.stale(link) else 0.0)
            connected.add_metric([name], 1.0 if link.connected else 0.0)
            if link.stale_since is not None:
                age.add_metric([name], max(0.0, now - link.stale_since))
        losses = CounterMetricFamily("shardmesh_sidecar_directory_losses",
                                     "Directory streams lost, by reason", labels=["reason"])
        for reason, n in self.source.losses.items():
            losses.add_metric([reason], n)
        yield from (stale, age, connected, losses)
