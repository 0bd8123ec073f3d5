"""One StatefulSet's list+watch pair, in two daemon threads (the ``kubernetes`` client blocks).

- The StatefulSet by name (``fieldSelector=metadata.name=S``); its pods by the
  StatefulSet's own ``spec.selector`` (``sidecar.selectors``), so the API
  server sends only those pods. The pod watch starts once the StatefulSet is
  known, and restarts (one list) when its selector changes: deleted and made
  again with another one.
- A broken watch resumes from its last resourceVersion after a jittered
  backoff; only 410 Gone lists again. So an API-server restart costs at most one
  list per watch, and none when the new server still serves the old version.
- Every change recomputes the map with ``directory.maps.build`` (the sidecar's
  pure code) and hands it to ``deliver`` with the monotonic time the event
  arrived; ``deliver`` passes it to the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from directory import metrics
from directory.maps import DirMap, MapKey, Obj, build
from sidecar.discovery import Collection, PodInfo, pod_info
from sidecar.selectors import label_selector

log = logging.getLogger("shardmesh.directory.informer")

Deliver = Callable[[DirMap, float], None]
WATCH_SECONDS = 240
LIST_TIMEOUT = 30.0


def jittered(backoff: float) -> float:
    """Full jitter: many informers broken by one API-server restart do not return at once."""
    return random.uniform(backoff / 2, backoff)


class Informer:
    def __init__(self, key: MapKey, api: Any, deliver: Deliver,
                 backoff: tuple[float, float] = (0.2, 5.0)) -> None:
        self.key, self.api, self.deliver = key, api, deliver
        self.backoff_start, self.backoff_max = backoff
        self.stopped = threading.Event()
        self.cond = threading.Condition()
        self.sts: Obj | None = None
        self.selector: str | None = None
        self.pods: dict[str, PodInfo] = {}
        self.listed = {"sts": False, "pods": False}
        self.last: DirMap | None = None
        self.watches: dict[str, Any] = {}
        #: Lists per kind ("sts", "pods"), for /v1/maps: 1 each after a clean start.
        self.lists = {"sts": 0, "pods": 0}
        self.events = 0

    def start(self) -> None:
        for kind, target in (("sts", self._sts_loop), ("pods", self._pods_loop)):
            threading.Thread(target=target, daemon=True,
                             name=f"informer-{self.key}-{kind}").start()

    def stop(self) -> None:
        self.stopped.set()
        with self.cond:
            self.cond.notify_all()
        for kind in list(self.watches):
            self._interrupt(kind)

    def _interrupt(self, kind: str) -> None:
        """Unblock the thread reading ``kind``'s watch (it then sees why and acts)."""
        response = getattr(self.watches.get(kind), "_resp", None)
        if response is not None:
            with contextlib.suppress(Exception):  # already closed: nothing to unblock
                response.shutdown()

    # --- the two loops ---------------------------------------------------------

    def _sts_loop(self) -> None:
        ns, name = self.key.namespace, self.key.statefulset
        collection = Collection(self.api, f"/apis/apps/v1/namespaces/{ns}/statefulsets",
                                [("fieldSelector", f"metadata.name={name}")])
        self._list_watch("sts", collection, lambda: True)

    def _pods_loop(self) -> None:
        while not self.stopped.is_set():
            with self.cond:
                while not self.stopped.is_set() and self.selector is None:
                    self.cond.wait()
                selector = self.selector
            if selector is None:
                return
            collection = Collection(self.api, f"/api/v1/namespaces/{self.key.namespace}/pods",
                                    [("labelSelector", selector)])
            self._list_watch("pods", collection, partial(self._selects, selector))

    def _selects(self, selector: str) -> bool:
        return self.selector == selector

    def _list_watch(self, kind: str, collection: Collection, valid: Callable[[], bool]) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        version: str | None = None
        backoff = self.backoff_start
        while not self.stopped.is_set() and valid():
            try:
                if version is None:
                    reason = "initial" if self.lists[kind] == 0 else "relist"
                    listed = collection.list(timeout=LIST_TIMEOUT)
                    self.lists[kind] += 1
                    metrics.LISTS.labels(kind, reason).inc()
                    version = listed["metadata"]["resourceVersion"]
                    self._replace(kind, listed.get("items") or [], time.monotonic())
                stream = watch.Watch()  # type: ignore[no-untyped-call]
                self.watches[kind] = stream
                events = stream.stream(  # type: ignore[no-untyped-call]
                    collection, resource_version=version, timeout_seconds=WATCH_SECONDS,
                    allow_watch_bookmarks=True, _request_timeout=WATCH_SECONDS + 30)
                for event in events:
                    arrived = time.monotonic()
                    if self.stopped.is_set() or not valid():
                        stream.stop()  # type: ignore[no-untyped-call]
                        return
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self.events += 1
                        metrics.API_EVENTS.labels(kind).inc()
                        self._apply(kind, event["type"], obj, arrived)
                backoff = self.backoff_start
            except ApiException as err:
                if self.stopped.is_set():
                    return
                if err.status == 410:
                    log.info("%s: %s watch expired (410 Gone): listing again", self.key, kind)
                    metrics.WATCH_ERRORS.labels(kind, "gone").inc()
                    version = None
                    continue
                log.warning("%s: %s watch: %s %s", self.key, kind, err.status, err.reason)
                metrics.WATCH_ERRORS.labels(kind, f"http_{err.status}").inc()
                backoff = self._pause(backoff)
            except Exception as err:  # noqa: BLE001 - connection errors of every kind
                if self.stopped.is_set() or not valid():
                    return
                log.warning("%s: %s watch: %s: %s", self.key, kind, type(err).__name__, err)
                metrics.WATCH_ERRORS.labels(kind, "connection").inc()
                backoff = self._pause(backoff)

    def _pause(self, backoff: float) -> float:
        self.stopped.wait(jittered(backoff))
        return min(backoff * 2, self.backoff_max)

    # --- state (under the condition's lock) --------------------------------------

    def _replace(self, kind: str, items: list[Obj], arrived: float) -> None:
        with self.cond:
            if kind == "sts":
                named = [s for s in items
                         if (s.get("metadata") or {}).get("name") == self.key.statefulset]
                self._set_sts(named[0] if named else None)
            else:
                self.pods = {}
                for pod in items:
                    info = pod_info(pod, self.key.statefulset)
                    if info is not None:
                        self.pods[info.name] = info
            self.listed[kind] = True
            self._publish_locked(arrived)

    def _apply(self, kind: str, event: str, obj: Obj, arrived: float) -> None:
        with self.cond:
            name = (obj.get("metadata") or {}).get("name") or ""
            if kind == "sts":
                if name != self.key.statefulset:
                    return
                self._set_sts(None if event == "DELETED" else obj)
            else:
                info = None if event == "DELETED" else pod_info(obj, self.key.statefulset)
                if info is None:
                    if self.pods.pop(name, None) is None:
                        return
                else:
                    self.pods[name] = info
            self._publish_locked(arrived)

    def _set_sts(self, sts: Obj | None) -> None:
        self.sts = sts
        selector: str | None = None
        if sts is not None:
            try:
                selector = label_selector((sts.get("spec") or {}).get("selector"))
            except ValueError as err:
                log.warning("%s: not watching its pods: %s", self.key, err)
        if selector != self.selector:
            self.selector = selector
            self.pods, self.listed["pods"] = {}, False
            self.cond.notify_all()
            self._interrupt("pods")

    def _publish_locked(self, arrived: float) -> None:
        if not self.listed["sts"] or (self.selector is not None and not self.listed["pods"]):
            return  # nothing is guessed: wait for the first full lists
        previous = self.last.slot_map if self.last is not None else None
        current = build(self.key, self.sts, self.pods.values(), previous)
        if current == self.last:
            return  # e.g. a status heartbeat that changes nothing a client sees
        self.last = current
        self.deliver(current, arrived)
