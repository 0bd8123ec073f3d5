"""A stand-in kubelet for the tests, in the way KWOK simulates nodes.

Rules:
- One daemon thread per watched namespace lists, then watches, its pods and
  patches each live pod's status subresource to Running + Ready with a
  loopback pod IP (see ``podstatus``). It survives watch expiry (410) and
  apiserver restarts by listing again.
- ``set_ready`` overrides readiness per (namespace, pod name) until changed
  again; the watcher honours the override, so it never re-readies such a pod,
  even one that is deleted and recreated under the same name.
- A patch and the read of the override happen under one lock, so the watcher
  and ``set_ready`` cannot undo each other.
- Failed patches that are not "pod gone" are collected in ``errors``: the
  fixture fails the test with them, since they mean the simulation is wrong.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from typing import Any

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import ControlPlane
from tests.cluster.podstatus import IpAllocator, Pod, needs_update, running_status_patch

log = logging.getLogger(__name__)
WATCH_SECONDS = 30  # server-side watch timeout; each renewal is cheap
RETRY_PAUSE = 0.2  # between attempts while the apiserver is away
# One allocator per test process: a pod name keeps its IP across Kubelet instances.
ALLOCATOR = IpAllocator()


def raw_json(response: object) -> Any:
    """The JSON body of a call made with ``_preload_content=False`` (plain dicts, camelCase)."""
    return json.loads(getattr(response, "data"))  # noqa: B009 - the stubs claim a model


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubelet:
    """Plays the kubelet for every pod in the namespaces passed to :meth:`watch`."""

    def __init__(self, control_plane: ControlPlane) -> None:
        self._cp = control_plane
        self._api = client.CoreV1Api(control_plane.api_client())
        self._lock = threading.RLock()
        self._ready: dict[tuple[str, str], bool] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()
        self.errors: list[str] = []

    # ---- public interface ---------------------------------------------------------------

    def watch(self, namespace: str) -> None:
        """From now on, every pod in ``namespace`` gets Running, Ready and its pod IP."""
        with self._lock:
            if namespace in self._threads:
                return
            thread = threading.Thread(target=self._run, args=(namespace,), daemon=True,
                                      name=f"kubelet-{namespace}")
            self._threads[namespace] = thread
        thread.start()

    def ip_for(self, namespace: str, pod_name: str) -> str:
        """The loopback IP that pod gets (or has); known before the pod exists."""
        return ALLOCATOR.ip_for(namespace, pod_name)

    def assign_ip(self, namespace: str, pod_name: str, ip: str) -> None:
        """Report ``ip`` as that pod's IP instead of a loopback one (call before it exists)."""
        ALLOCATOR.assign(namespace, pod_name, ip)

    def set_ready(self, namespace: str, pod_name: str, ready: bool) -> None:
        """Set the pod's Ready/ContainersReady to ``ready`` (now or once it exists); keep it so."""
        with self._lock:
            self._ready[(namespace, pod_name)] = ready
            try:
                pod = self._read(namespace, pod_name)
            except ApiException as exc:
                if exc.status == 404:
                    return  # applied when the pod appears
                raise
            self._reconcile(self._api, pod, raise_errors=True)

    def stop(self) -> None:
        """Stop acting; the threads end at their next event or watch renewal."""
        self._stop.set()

    # ---- reconciliation -------------------------------------------------------------------

    def _read(self, namespace: str, name: str) -> Pod:
        resp = self._api.read_namespaced_pod(name, namespace, _preload_content=False)
        pod: Pod = raw_json(resp)
        return pod

    def _reconcile(self, api: client.CoreV1Api, pod: Pod, raise_errors: bool = False) -> None:
        meta = pod["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        with self._lock:
            if self._stop.is_set():
                return
            ready = self._ready.get((namespace, name), True)
            ip = self.ip_for(namespace, name)
            if not needs_update(pod, ip, ready):
                return
            body = running_status_patch(pod, ip, ready, _now())
            try:
                api.patch_namespaced_pod_status(name, namespace, body)
            except ApiException as exc:
                if exc.status == 404:
                    return  # deleted meanwhile
                message = f"status patch of pod {namespace}/{name} failed: {exc.status} {exc.body}"
                if raise_errors:
                    raise
                log.error(message)
                self.errors.append(message)

    # ---- the watch loop -------------------------------------------------------------------

    def _run(self, namespace: str) -> None:
        api = client.CoreV1Api(self._cp.api_client())  # a watch holds a connection of its own
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list(api, namespace)
                resource_version = self._watch(api, namespace, resource_version)
            except ApiException as exc:
                if exc.status == 410:  # history compacted: list again
                    resource_version = None
                    continue
                self._pause(f"watch of pods in {namespace}: {exc.status} {exc.reason}")
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                self._pause(f"watch of pods in {namespace}: {exc}")  # apiserver restarting

    def _list(self, api: client.CoreV1Api, namespace: str) -> str:
        resp = api.list_namespaced_pod(namespace, _preload_content=False, _request_timeout=10)
        body = raw_json(resp)
        for pod in body["items"]:
            pod["metadata"].setdefault("namespace", namespace)
            self._reconcile(api, pod)
        version: str = body["metadata"]["resourceVersion"]
        return version

    def _watch(self, api: client.CoreV1Api, namespace: str, resource_version: str) -> str:
        """Follow events until the server ends the watch; returns the last version seen."""
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        for event in stream.stream(  # type: ignore[no-untyped-call]
                api.list_namespaced_pod, namespace, resource_version=resource_version,
                allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS,
                _request_timeout=WATCH_SECONDS + 10):
            if self._stop.is_set():
                stream.stop()  # type: ignore[no-untyped-call]
                break
            raw: dict[str, Any] = event["raw_object"]
            resource_version = raw["metadata"]["resourceVersion"]
            if event["type"] in ("ADDED", "MODIFIED"):
                self._reconcile(api, raw)
        return resource_version

    def _pause(self, why: str) -> None:
        log.debug("kubelet retrying: %s", why)
        time.sleep(RETRY_PAUSE)
