"""The shard map from Kubernetes: watch each route's StatefulSet and its pods.

Design rules:
- Per route, two list-then-watch loops run in daemon threads (the ``kubernetes``
  client blocks): one on the StatefulSet (field selector ``metadata.name``), one
  on its pods by the StatefulSet's own ``spec.selector``, started once the
  StatefulSet is known and restarted when the selector changes. Each change
  recomputes the route's snapshot with the pure ``snapshot`` function and hands
  it to the event loop with ``call_soon_threadsafe``; the loop thread is the only writer of the map.
- ``N = spec.replicas`` (desired), ``s = spec.ordinals.start`` (0 when absent).
  Shard i (the key function's result, 0..N-1) is the pod with ordinal s + i; it
  is ready iff that pod exists, is owned by S, has Ready=True, has no
  deletionTimestamp and has a pod IP. A change of s is a change of S like any
  other: the next snapshot maps every shard to its new pod.
- A pod's ordinal is its own: its ``apps.kubernetes.io/pod-index`` label, or the
  number in its name where the label is absent. A pod counts only if it is
  named ``S-<n>``, a StatefulSet named S owns it, and its label (if any) says
  n too: a stray pod that merely looks like ``S-1`` must never receive traffic.
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
import contextlib
import json
import logging
import random
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sidecar.annotations import RouteSpec
from sidecar.backoff import full_jitter
from sidecar.metrics import Stats
from sidecar.reload import AnnotationsFile
from sidecar.selectors import label_selector
from sidecar.settings import Settings
from sidecar.shardmap import Shard, ShardMap
from sidecar.slots import SlotError, SlotMap
from sidecar.slots import parse as parse_slots

log = logging.getLogger("shardmesh.sidecar.discovery")

#: Set by the StatefulSet controller (Kubernetes >= 1.28) to the pod's ordinal.
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
#: An ordinal as the controller writes it, in names and in the label.
_ORDINAL = r"(?:0|[1-9][0-9]*)"
#: An API object as JSON.
Obj = dict[str, Any]

WATCH_SECONDS = 240  # server-side watch timeout; renewed from the last resourceVersion
BACKOFF_START, BACKOFF_MAX = 0.1, 5.0  # full jitter (sidecar.backoff) within these
#: A relist after 410 Gone waits a uniform [0, RELIST_SPREAD) s first, so the
#: sidecars of a cluster whose watches all expired at once do not list in one burst.
RELIST_SPREAD = 5.0


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


@dataclass(frozen=True)
class PodInfo:
    ordinal: int
    ready: bool
    ip: str | None
    name: str


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


def pod_info(pod: Obj, statefulset: str) -> PodInfo | None:
    """The pod (JSON) as an ordinal of ``statefulset``, or None when it is not one of its pods."""
    meta = pod.get("metadata") or {}
    name = meta.get("name") or ""
    match = re.fullmatch(re.escape(statefulset) + f"-({_ORDINAL})", name)
    if match is None:
        return None
    index = (meta.get("labels") or {}).get(POD_INDEX_LABEL)
    if index is not None and index != match[1]:
        return None  # not the pod its name says: which ordinal it serves is unknown
    owners = meta.get("ownerReferences") or []
    if not any(o.get("kind") == "StatefulSet" and o.get("name") == statefulset for o in owners):
        return None
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    ip = status.get("podIP")
    terminating = meta.get("deletionTimestamp") is not None
    return PodInfo(ordinal=int(match[1]), ready=ready and not terminating and bool(ip),
                   ip=ip or None, name=name)


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


class Collection:
    """GET on one collection of the API, as a list or as a watch, in plain JSON.

    The client's generated API classes are not used: importing ``CoreV1Api``
    alone costs the process about 22 MiB (measured), more than the rest of the
    sidecar, and the models they build are not needed for four fields. The
    ``kubernetes`` client still does the rest: configuration, authentication,
    TLS, and ``watch.Watch`` (which calls this object as its list function).
    """

    def __init__(self, api: Any, path: str, query: list[tuple[str, str]]) -> None:
        self.api, self.path, self.query = api, path, query

    def list(self, timeout: float) -> Obj:
        from kubernetes.client.exceptions import ApiException

        response = self(_request_timeout=timeout)
        if not 200 <= response.status <= 299:
            raise ApiException(status=response.status, reason=response.reason)
        document: Obj = json.loads(response.data)
        return document

    def __call__(self, **kwargs: Any) -> Any:
        # No return annotation the watch could read: it then yields plain dicts.
        query = list(self.query)
        for name, param in (("watch", "watch"), ("resource_version", "resourceVersion"),
                            ("timeout_seconds", "timeoutSeconds"),
                            ("allow_watch_bookmarks", "allowWatchBookmarks")):
            value = kwargs.get(name)
            if value is not None and value is not False:
                query.append((param, "true" if value is True else str(value)))
        method, url, headers, body, post = self.api.param_serialize(
            "GET", self.path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        response = self.api.call_api(method, url, headers, body, post,
                                     _request_timeout=kwargs.get("_request_timeout"))
        if kwargs.get("_preload_content", True):
            response.read()
            return response
        return response.response  # the raw stream, for watch.Watch


def _always() -> bool:
    return True


class RouteWatch:
    """The two watches of one route, feeding ``publish`` with every new snapshot.

    The StatefulSet is watched by name. Its pods are watched by the StatefulSet's
    own ``spec.selector`` once it is known (a busy namespace's other pods are never
    sent), by a loop restarted whenever the selector changes; the loop of an old
    selector may write nothing (``valid``) and its stream is cut short."""

    def __init__(self, spec: RouteSpec, client: Any, publish: Publish, stats: Stats,
                 rand: Callable[[], float] = random.random) -> None:
        self.spec, self.client, self.publish, self.stats = spec, client, publish, stats
        self.rand = rand
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.sts: StatefulSetInfo | None = None
        self.selector: str | None = None
        self.pods: dict[str, PodInfo] = {}
        self.listed = {"sts": False, "pods": False}
        #: Bumped on every selector change: only the pod loop of the current one writes.
        self.pod_loop = 0
        self.streams: dict[str, Any] = {}
        self.running = False  # threads only once started (tests drive the state directly)

    def start(self) -> None:
        self.running = True
        backend = self.spec.backend
        sts = Collection(self.client, f"/apis/apps/v1/namespaces/{backend.namespace}/statefulsets",
                         [("fieldSelector", f"metadata.name={backend.statefulset}")])
        threading.Thread(target=self._loop, args=("sts", sts, _always), daemon=True,
                         name=f"watch-{self.spec.name}-sts").start()

    def stop(self) -> None:
        self.stopped.set()
        for kind in list(self.streams):
            self._interrupt(kind)

    def _interrupt(self, kind: str) -> None:
        """Unblock the thread reading ``kind``'s watch (it then sees why and acts)."""
        response = getattr(self.streams.get(kind), "_resp", None)
        if response is not None:
            with contextlib.suppress(Exception):  # already closed: nothing to unblock
                response.shutdown()

    def _restart_pods_locked(self) -> None:
        """A new pod loop for ``self.selector`` (none while it is None)."""
        self.pod_loop += 1
        self._interrupt("pods")
        if self.selector is None or not self.running:
            return
        mine = self.pod_loop
        pods = Collection(self.client, f"/api/v1/namespaces/{self.spec.backend.namespace}/pods",
                          [("labelSelector", self.selector)])
        threading.Thread(target=self._loop, args=("pods", pods, lambda: self.pod_loop == mine),
                         daemon=True, name=f"watch-{self.spec.name}-pods-{mine}").start()

    # --- the list-then-watch loop (thread) ----------------------------------------

    def _loop(self, kind: str, collection: Collection, valid: Callable[[], bool]) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        version: str | None = None
        attempt, lists = 0, 0
        while not self.stopped.is_set() and valid():
            try:
                if version is None:
                    if lists and self.stopped.wait(self.rand() * RELIST_SPREAD):
                        return  # a relist: spread over RELIST_SPREAD, not all at once
                    listed = collection.list(timeout=30)
                    lists += 1
                    version = listed["metadata"]["resourceVersion"]
                    self._replace(kind, listed.get("items") or [], valid)
                stream = watch.Watch()  # type: ignore[no-untyped-call]
                self.streams[kind] = stream
                events = stream.stream(  # type: ignore[no-untyped-call]
                    collection, resource_version=version, timeout_seconds=WATCH_SECONDS,
                    allow_watch_bookmarks=True, _request_timeout=WATCH_SECONDS + 30)
                for event in events:
                    if self.stopped.is_set() or not valid():
                        stream.stop()  # type: ignore[no-untyped-call]
                        return
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._apply(kind, event["type"], obj, valid)
                attempt = 0
            except ApiException as err:
                if self.stopped.is_set() or not valid():
                    return
                if err.status == 410:
                    log.info("route %s: %s watch expired (410): listing again",
                             self.spec.name, kind)
                    self._count("expired")
                    version = None
                    continue
                log.warning("route %s: %s watch: %s %s", self.spec.name, kind, err.status,
                            err.reason)
                self._count(f"http_{err.status}")
                attempt = self._pause(attempt)
            except Exception as err:  # noqa: BLE001 - connection errors of every kind
                if self.stopped.is_set() or not valid():
                    return  # interrupted: a new selector's loop has taken over
                log.warning("route %s: %s watch: %s: %s", self.spec.name, kind,
                            type(err).__name__, err)
                self._count("connection")
                attempt = self._pause(attempt)  # then resume from ``version``: no relist

    def _pause(self, attempt: int) -> int:
        self.stopped.wait(full_jitter(attempt, BACKOFF_START, BACKOFF_MAX, self.rand))
        return attempt + 1

    def _count(self, reason: str) -> None:
        restarts = self.stats.watch_restarts
        restarts[reason] = restarts.get(reason, 0) + 1  # only approximate across threads

    # --- state (thread side, under the lock) ------------------------------------------

    def _replace(self, kind: str, items: list[Obj], valid: Callable[[], bool] = _always
                 ) -> None:
        with self.lock:
            if not valid():
                return
            if kind == "sts":
                named = [s for s in items
                         if (s.get("metadata") or {}).get("name") == self.spec.backend.statefulset]
                self._set_sts_locked(named[0] if named else None)
            else:
                self.pods = {}
                for pod in items:
                    info = pod_info(pod, self.spec.backend.statefulset)
                    if info is not None:
                        self.pods[info.name] = info
            self.listed[kind] = True
            self._publish_locked()

    def _apply(self, kind: str, event: str, obj: Obj, valid: Callable[[], bool] = _always
               ) -> None:
        with self.lock:
            if not valid():
                return
            name = (obj.get("metadata") or {}).get("name") or ""
            if kind == "sts":
                if name != self.spec.backend.statefulset:
                    return
                self._set_sts_locked(None if event == "DELETED" else obj)
            else:
                info = None if event == "DELETED" else pod_info(obj, self.spec.backend.statefulset)
                if info is None:
                    if self.pods.pop(name, None) is None:
                        return  # not one of ours: nothing changed
                else:
                    self.pods[name] = info
            self._publish_locked()

    def _set_sts_locked(self, obj: Obj | None) -> None:
        self.sts = None if obj is None else statefulset_info(obj)
        selector = None if obj is None else pod_selector(obj, self.spec.name)
        if selector == self.selector and self.listed["pods"]:
            return
        self.selector = selector
        # No selector (no StatefulSet): no pods, and nothing to wait for. A new one: wait
        # for its list before publishing again (the last map stays meanwhile).
        self.pods, self.listed["pods"] = {}, selector is None
        self._restart_pods_locked()

    def _publish_locked(self) -> None:
        if not all(self.listed.values()):
            return
        self.publish(snapshot(self.spec, self.sts, self.pods.values()))


def pod_selector(sts: Obj, route: str) -> str | None:
    """The StatefulSet's ``spec.selector`` as a query, None (logged) if it cannot be one."""
    try:
        return label_selector((sts.get("spec") or {}).get("selector"))
    except ValueError as err:
        log.warning("route %s: not watching pods: %s", route, err)
        return None


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

