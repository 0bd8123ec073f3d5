"""The shard map from Kubernetes: watch each route's StatefulSet and its pods.

Design rules:
- Per route, a ``RouteWatch`` (``sidecar.listwatch``, the list-then-watch loop
  the directory's informer shares) follows the StatefulSet by name and its pods
  by the StatefulSet's own selector. Each change recomputes the route's
  snapshot with the pure ``snapshot`` function and hands it to the event loop
  with ``call_soon_threadsafe``; the loop thread is the only writer of the map.
- ``N = spec.replicas`` (desired), ``s = spec.ordinals.start`` (0 when absent).
  Shard i (the key function's result, 0..N-1) is the pod with ordinal s + i; it
  is ready iff that pod (``sidecar.pods``: its own ordinal, owned by S) is
  ready and has a pod IP. A change of s is a change of S like any other: the
  next snapshot maps every shard to its new pod.
- Watch expiry (410) lists again after a jittered delay; connection errors (an
  apiserver restart) keep the last known map and resume the watch from the last
  resourceVersion (no list) after a full-jitter backoff, so a thousand sidecars
  do not come back in lockstep. Nothing is guessed:
  until the first full list, the route is not synced (503 shard_map_not_ready).
- Slot mode (SPEC §6): each StatefulSet event also parses its slot annotations
  (``sidecar.slots.parse``); the map decides on the loop thread whether they
  replace the last good slot map (``slot_state.next_slots``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sidecar.annotations import RouteSpec
from sidecar.listwatch import (
    BACKOFF_MAX,
    BACKOFF_START,
    RELIST_SPREAD,
    Collection,
    Obj,
    StatefulSetWatch,
    pod_selector,
)
from sidecar.metrics import Stats
from sidecar.pods import POD_INDEX_LABEL, PodInfo, pod_info
from sidecar.reload import AnnotationsFile
from sidecar.settings import Settings
from sidecar.shardmap import Shard, ShardMap
from sidecar.slots import SlotError, SlotMap
from sidecar.slots import parse as parse_slots

log = logging.getLogger("shardmesh.sidecar.discovery")

__all__ = ["BACKOFF_MAX", "BACKOFF_START", "POD_INDEX_LABEL", "RELIST_SPREAD", "Collection",
           "KubernetesSource", "PodInfo", "RouteWatch", "Snapshot", "StartupError",
           "StatefulSetInfo", "api_client", "pod_info", "pod_selector", "snapshot",
           "statefulset_info"]


@dataclass(frozen=True)
class StatefulSetInfo:
    replicas: int
    #: The first containerPort of the pod template, if any.
    template_port: int | None
    #: spec.ordinals.start: the ordinal of the pod that serves shard 0.
    start: int = 0
    #: Why this StatefulSet cannot be mapped ("" when it can).
    problem: str = ""
    #: Slot mode (SPEC §6): the parsed slot annotations (None: default mode), or why
    #: they are invalid (the sidecar then keeps its last good map).
    slots: SlotMap | None = None
    slot_error: str = ""


def statefulset_info(sts: Obj) -> StatefulSetInfo:
    """From a StatefulSet as the API sends it (JSON)."""
    spec = sts.get("spec") or {}
    replicas = spec.get("replicas")
    replicas = 1 if replicas is None else int(replicas)  # the API default is 1
    port = None
    template = (spec.get("template") or {}).get("spec") or {}
    for container in template.get("containers") or []:
        for container_port in container.get("ports") or []:
            port = int(container_port["containerPort"])
            break
        if port is not None:
            break
    start = (spec.get("ordinals") or {}).get("start", 0)
    if start is None:
        start = 0
    if type(start) is not int or start < 0:  # bool is an int subclass, and no ordinal
        name = (sts.get("metadata") or {}).get("name")
        return StatefulSetInfo(replicas=replicas, template_port=port, problem=(
            f"statefulset {name}: spec.ordinals.start is {start!r}, "
            "expected a non-negative integer"))
    annotations = (sts.get("metadata") or {}).get("annotations") or {}
    try:
        return StatefulSetInfo(replicas=replicas, template_port=port, start=start,
                               slots=parse_slots(annotations, start))
    except SlotError as err:
        return StatefulSetInfo(replicas=replicas, template_port=port, start=start,
                               slot_error=str(err))


@dataclass(frozen=True)
class Snapshot:
    """A route's map as discovery sees it: ``shards[i]`` is the pod with ordinal start + i."""

    count: int
    start: int
    shards: list[Shard]
    problem: str
    slots: SlotMap | None = None
    slot_error: str = ""
    #: The slot annotations were not read (a bad spec): the route keeps its slot map.
    keep_slots: bool = field(default=False, compare=False)


def snapshot(spec: RouteSpec, sts: StatefulSetInfo | None, pods: Iterable[PodInfo]) -> Snapshot:
    """The route's map: pure, so the rules above are testable."""
    backend = spec.backend
    if sts is None:
        # deleted: its slot map goes too, so a re-created one may start at epoch 1 again
        return Snapshot(0, 0, [], f"statefulset {backend.namespace}/{backend.statefulset} "
                        "not found")
    if sts.problem:
        return Snapshot(0, 0, [], sts.problem, keep_slots=True)
    port = backend.port or sts.template_port
    by_ordinal = {p.ordinal: p for p in pods}
    shards = []
    for ordinal in range(sts.start, sts.start + sts.replicas):
        pod = by_ordinal.get(ordinal)
        name = f"{backend.statefulset}-{ordinal}"
        if pod is None:
            shards.append(Shard(ordinal=ordinal, pod=name))
            continue
        address = (pod.ip, port) if pod.ip and port else None
        shards.append(Shard(ordinal=ordinal, ready=pod.ready and address is not None,
                            address=address, pod=name))
    problem = "" if port else (f"no port: statefulset {backend.statefulset} declares no "
                               "containerPort and the route gives none")
    return Snapshot(sts.replicas, sts.start, shards, problem, sts.slots, sts.slot_error)


def api_client(settings: Settings) -> Any:
    """A client from --kubeconfig/KUBECONFIG, else the pod's service account."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if settings.kubeconfig:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=settings.kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
    except (config.ConfigException, OSError, ValueError) as err:
        where = f"kubeconfig {settings.kubeconfig}" if settings.kubeconfig else \
            "in-cluster config (no --kubeconfig or KUBECONFIG given)"
        raise StartupError(f"cannot load the {where}: {err}") from None
    return client.ApiClient(configuration)


class StartupError(RuntimeError):
    """The sidecar cannot start; the message says why (shown without a traceback)."""


Publish = Callable[[Snapshot], None]


class RouteWatch(StatefulSetWatch):
    """A route's StatefulSet watch, feeding ``publish`` with every new snapshot."""

    def __init__(self, spec: RouteSpec, client: Any, publish: Publish, stats: Stats,
                 rand: Callable[[], float] = random.random) -> None:
        backend = spec.backend
        super().__init__(backend.namespace, backend.statefulset, client, f"route {spec.name}",
                         rand)
        self.spec, self.publish, self.stats = spec, publish, stats

    def _publish_locked(self) -> None:
        info = None if self.sts is None else statefulset_info(self.sts)
        self.publish(snapshot(self.spec, info, self.pods.values()))

    def _failed(self, kind: str, reason: str) -> None:
        restarts = self.stats.watch_restarts
        restarts[reason] = restarts.get(reason, 0) + 1  # only approximate across threads


class KubernetesSource:
    """Routes from the annotations file; each route's map from its watches."""

    def __init__(self, settings: Settings, shard_map: ShardMap, stats: Stats,
                 on_max_connections: Callable[[int | None], None] | None = None) -> None:
        self.settings, self.map, self.stats = settings, shard_map, stats
        #: Told ``shard.io/max-connections`` (None when unset) on every good reload.
        self.on_max_connections = on_max_connections
        assert settings.annotations_file is not None
        self.file = AnnotationsFile(settings.annotations_file, settings.pod_namespace)
        self.watches: dict[str, RouteWatch] = {}
        self.client: Any = None
        self.task: asyncio.Task[None] | None = None
        #: False until the annotations file has been read once.
        self.loaded = False

    @property
    def ready(self) -> bool:
        return self.loaded

    async def start(self) -> None:
        self.client = api_client(self.settings)
        self.reload()
        self.task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        for route_watch in self.watches.values():
            route_watch.stop()
        self.watches.clear()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            if self.file.changed():
                self.reload()

    def reload(self) -> None:
        """Read the file; apply its routes if they parse, else keep the current ones."""
        specs = self.file.read()
        if specs is None:
            self.stats.annotation_reloads["error"] += 1
            return
        self.stats.annotation_reloads["ok"] += 1
        self.loaded = True
        if self.on_max_connections is not None:
            self.on_max_connections(self.file.max_connections)
        self.apply(specs)

    def apply(self, specs: tuple[RouteSpec, ...]) -> None:
        restart = self.map.set_specs(specs)
        for name in [n for n in self.watches if self.map.get(n) is None]:
            self.watches.pop(name).stop()
        for spec in restart:
            old = self.watches.pop(spec.name, None)
            if old is not None:
                old.stop()
            route_watch = RouteWatch(spec, self.client, self._publisher(spec), self.stats)
            self.watches[spec.name] = route_watch
            route_watch.start()
            log.info("route %s: watching statefulset %s/%s", spec.name,
                     spec.backend.namespace, spec.backend.statefulset)

    def _publisher(self, spec: RouteSpec) -> Publish:
        loop = asyncio.get_running_loop()
        shard_map = self.map

        def publish(shot: Snapshot) -> None:
            def apply() -> None:
                current = shard_map.get(spec.name)
                if current is not None and current.spec.backend == spec.backend:
                    shard_map.update(spec.name, count=shot.count, start=shot.start,
                                     shards=shot.shards, problem=shot.problem, slots=shot.slots,
                                     slot_error=shot.slot_error, keep_slots=shot.keep_slots)

            loop.call_soon_threadsafe(apply)

        return publish

