"""One StatefulSet and its pods, list-then-watch: the loop the sidecar and the directory share.

``StatefulSetWatch`` is the only Kubernetes watch code of shardmesh: the
sidecar's direct mode (``discovery.RouteWatch``) and the directory's informer
(``directory.informer.Informer``) extend it with what they do with a change
(``_publish_locked``) and what they count (``_listed``, ``_event``,
``_failed``). It lives in ``sidecar`` because the sidecar must run without the
``directory`` package.

Design rules:
- Narrow: the StatefulSet by name (``fieldSelector=metadata.name=S``); its pods
  by the StatefulSet's own ``spec.selector`` (``sidecar.selectors``), so the
  API server sends only those pods. The pod loop starts once the StatefulSet
  is known and is replaced (one list) when the selector changes; the loop of an
  old selector writes nothing (``valid``) and its stream is cut short.
- Each loop runs in a daemon thread (the ``kubernetes`` client blocks). A
  broken watch resumes from its last resourceVersion after a full-jitter
  backoff (``sidecar.backoff``); only 410 Gone lists again, after a uniform
  [0, ``RELIST_SPREAD``) s delay, so the watchers of a cluster whose watches
  all expired at once do not list in one burst. An API-server restart thus
  costs at most one list per watch, and none when the new server still serves
  the old version.
- Nothing is guessed: ``_publish_locked`` is called only once both the
  StatefulSet and (when it has a selector) its pods have been listed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from sidecar.backoff import full_jitter
from sidecar.pods import PodInfo, pod_info
from sidecar.selectors import label_selector

log = logging.getLogger("shardmesh.listwatch")

#: An API object as JSON.
Obj = dict[str, Any]
WATCH_SECONDS = 240  # server-side watch timeout; renewed from the last resourceVersion
LIST_TIMEOUT = 30.0
BACKOFF_START, BACKOFF_MAX = 0.1, 5.0  # full jitter (sidecar.backoff) within these
#: A relist after 410 Gone waits a uniform [0, RELIST_SPREAD) s first.
RELIST_SPREAD = 5.0


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


def pod_selector(sts: Obj, label: str) -> str | None:
    """The StatefulSet's ``spec.selector`` as a query, None (logged) if it cannot be one."""
    try:
        return label_selector((sts.get("spec") or {}).get("selector"))
    except ValueError as err:
        log.warning("%s: not watching pods: %s", label, err)
        return None


class StatefulSetWatch:
    """The StatefulSet ``namespace/name`` and its pods, kept current by two loops.

    State (``sts``, ``selector``, ``pods``, ``listed``) changes only under
    ``lock``; ``_publish_locked`` runs under it too, from a loop's thread."""

    def __init__(self, namespace: str, name: str, client: Any, label: str,
                 rand: Callable[[], float] = random.random) -> None:
        self.namespace, self.name, self.client, self.label = namespace, name, client, label
        self.rand = rand
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        #: The StatefulSet as the API sent it (None: not found, or not listed yet).
        self.sts: Obj | None = None
        self.selector: str | None = None
        self.pods: dict[str, PodInfo] = {}
        self.listed = {"sts": False, "pods": False}
        #: Bumped on every selector change: only the pod loop of the current one writes.
        self.pod_loop = 0
        self.streams: dict[str, Any] = {}
        self.running = False  # threads only once started (tests drive the state directly)

    # --- what the users of the watch add --------------------------------------------------

    def _publish_locked(self) -> None:
        """The StatefulSet or its pods changed (both listed): tell whoever needs it."""

    def _listed(self, kind: str, relist: bool) -> None:
        """``kind`` ("sts", "pods") was listed: the first time, or again after 410."""

    def _event(self, kind: str) -> None:
        """A watch event (not a bookmark) of ``kind`` arrived."""

    def _failed(self, kind: str, reason: str) -> None:
        """A watch broke: ``expired`` (410), ``http_<status>`` or ``connection``."""

    # --- the loops -------------------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        sts = Collection(self.client, f"/apis/apps/v1/namespaces/{self.namespace}/statefulsets",
                         [("fieldSelector", f"metadata.name={self.name}")])
        threading.Thread(target=self._loop, args=("sts", sts, _always), daemon=True,
                         name=f"watch-{self.label}-sts").start()

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
        if self.selector is None or not self.running or self.stopped.is_set():
            return
        mine = self.pod_loop
        pods = Collection(self.client, f"/api/v1/namespaces/{self.namespace}/pods",
                          [("labelSelector", self.selector)])
        threading.Thread(target=self._loop, args=("pods", pods, lambda: self.pod_loop == mine),
                         daemon=True, name=f"watch-{self.label}-pods-{mine}").start()

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
                    listed = collection.list(timeout=LIST_TIMEOUT)
                    self._listed(kind, lists > 0)
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
                        self._event(kind)
                        self._apply(kind, event["type"], obj, valid)
                attempt = 0
            except ApiException as err:
                if self.stopped.is_set() or not valid():
                    return
                if err.status == 410:
                    log.info("%s: %s watch expired (410): listing again", self.label, kind)
                    self._failed(kind, "expired")
                    version = None
                    continue
                log.warning("%s: %s watch: %s %s", self.label, kind, err.status, err.reason)
                self._failed(kind, f"http_{err.status}")
                attempt = self._pause(attempt)
            except Exception as err:  # noqa: BLE001 - connection errors of every kind
                if self.stopped.is_set() or not valid():
                    return  # interrupted: a new selector's loop has taken over
                log.warning("%s: %s watch: %s: %s", self.label, kind, type(err).__name__, err)
                self._failed(kind, "connection")
                attempt = self._pause(attempt)  # then resume from ``version``: no relist

    def _pause(self, attempt: int) -> int:
        self.stopped.wait(full_jitter(attempt, BACKOFF_START, BACKOFF_MAX, self.rand))
        return attempt + 1

    # --- state (thread side, under the lock) ------------------------------------------

    def _replace(self, kind: str, items: list[Obj], valid: Callable[[], bool] = _always
                 ) -> None:
        with self.lock:
            if not valid():
                return
            if kind == "sts":
                named = [s for s in items if (s.get("metadata") or {}).get("name") == self.name]
                self._set_sts_locked(named[0] if named else None)
            else:
                self.pods = {}
                for pod in items:
                    info = pod_info(pod, self.name)
                    if info is not None:
                        self.pods[info.name] = info
            self.listed[kind] = True
            self._ready_locked()

    def _apply(self, kind: str, event: str, obj: Obj, valid: Callable[[], bool] = _always
               ) -> None:
        with self.lock:
            if not valid():
                return
            name = (obj.get("metadata") or {}).get("name") or ""
            if kind == "sts":
                if name != self.name:
                    return
                self._set_sts_locked(None if event == "DELETED" else obj)
            else:
                info = None if event == "DELETED" else pod_info(obj, self.name)
                if info is None:
                    if self.pods.pop(name, None) is None:
                        return  # not one of ours: nothing changed
                else:
                    self.pods[name] = info
            self._ready_locked()

    def _set_sts_locked(self, obj: Obj | None) -> None:
        self.sts = obj
        selector = None if obj is None else pod_selector(obj, self.label)
        if selector == self.selector and (self.listed["pods"] or self.pod_loop > 0):
            return  # the same pods: the running loop (or none, for no selector) stays
        self.selector = selector
        # No selector (no StatefulSet): no pods, and nothing to wait for. A new one: wait
        # for its list before publishing again (the last map stays meanwhile).
        self.pods, self.listed["pods"] = {}, selector is None
        self._restart_pods_locked()

    def _ready_locked(self) -> None:
        if all(self.listed.values()):
            self._publish_locked()
