"""A recorder of pod watch events, in the order the apiserver emitted them.

One watch stream delivers events in resourceVersion order, so the position of
an event in ``events`` says what happened before what: that is how the tests
prove, for example, that pod -1 was created only after pod -0 became Ready.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch

from tests.cluster.controlplane import ControlPlane
from tests.cluster.kubelet import raw_json
from tests.cluster.podstatus import is_ready


@dataclass(frozen=True)
class PodEvent:
    kind: str  # ADDED, MODIFIED or DELETED
    name: str
    ready: bool


class PodEvents:
    """Records every pod event in a namespace from the moment :meth:`start` returns."""

    def __init__(self, control_plane: ControlPlane, namespace: str) -> None:
        self._api = client.CoreV1Api(control_plane.api_client())
        self._namespace = namespace
        self._lock = threading.Lock()
        self._events: list[PodEvent] = []
        self._stop = threading.Event()
        self.failure: BaseException | None = None

    def start(self) -> PodEvents:
        resp = self._api.list_namespaced_pod(self._namespace, _preload_content=False)
        version = raw_json(resp)["metadata"]["resourceVersion"]
        threading.Thread(target=self._run, args=(version,), daemon=True,
                         name=f"pod-events-{self._namespace}").start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def events(self) -> list[PodEvent]:
        with self._lock:
            return list(self._events)

    def first(self, kind: str, name: str, ready: bool | None = None) -> int:
        """Index of the first matching event; -1 if there is none."""
        for index, event in enumerate(self.events):
            if event.kind == kind and event.name == name and ready in (None, event.ready):
                return index
        return -1

    def first_ready(self, name: str) -> int:
        """Index of the first event showing ``name`` Ready; -1 if there is none."""
        for index, event in enumerate(self.events):
            if event.name == name and event.ready and event.kind != "DELETED":
                return index
        return -1

    def _run(self, version: str) -> None:
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            for event in stream.stream(  # type: ignore[no-untyped-call]
                    self._api.list_namespaced_pod, self._namespace,
                    resource_version=version, timeout_seconds=300):
                raw: dict[str, Any] = event["raw_object"]
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    with self._lock:
                        self._events.append(
                            PodEvent(event["type"], raw["metadata"]["name"], is_ready(raw)))
                if self._stop.is_set():
                    stream.stop()  # type: ignore[no-untyped-call]
        except BaseException as exc:  # reported by the test, which knows what it expected
            self.failure = exc
