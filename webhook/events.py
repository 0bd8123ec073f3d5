"""Kubernetes Events for decisions, posted off the request path.

linkerd's habit: a decision is logged, counted, and posted as an Event where
the user looks. At admission time a pod may have no name and never exists if
it is denied, so the Event goes to the pod's controller (the ReplicaSet, Job,
StatefulSet, ...): ``kubectl describe rs/...`` then says why a pod was
injected or refused. Pods without a controller get no Event (the client saw
the answer directly). Dry-run reviews never post Events (no side effects).

Posting happens in one daemon thread fed by a bounded queue: a slow or
unreachable API server must not slow down admission, so when the queue is
full Events are dropped (and counted in the log).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import secrets
import threading
from typing import Any

from kubernetes import client

from sidecar.annotations import clip
from webhook.logs import event
from webhook.podview import Obj, display_name, metadata
from webhook.policy import Decision
from webhook.review import AdmissionRequest

REASONS = {"injected": "ShardRouterInjected", "rejected": "ShardRouterRejected"}


def controller_of(pod: Obj) -> dict[str, Any] | None:
    refs = metadata(pod).get("ownerReferences") or []
    return next((r for r in refs if isinstance(r, dict) and r.get("controller")), None)


def build(request: AdmissionRequest, decision: Decision, component: str) -> Obj | None:
    """The core/v1 Event for a decision, or None when there is nobody to tell."""
    if decision.result not in REASONS or request.get("dryRun"):
        return None
    pod = request.get("object") or {}
    owner = controller_of(pod)
    namespace = request.get("namespace")
    if owner is None or not namespace:
        return None
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    what = "injected into" if decision.result == "injected" else "refused for"
    note = f"shard-router {what} pod {clip(display_name(pod))}: {decision.message}"
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{owner['name']}.{secrets.token_hex(8)}", "namespace": namespace},
        "involvedObject": {"apiVersion": owner.get("apiVersion"), "kind": owner.get("kind"),
                           "name": owner.get("name"), "uid": owner.get("uid"),
                           "namespace": namespace},
        "reason": REASONS[decision.result],
        "message": clip(note, 900),  # the API server's limit is 1024 bytes
        "type": "Normal" if decision.result == "injected" else "Warning",
        "source": {"component": component},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": component,
    }


class EventRecorder:
    def __init__(self, api: client.ApiClient, component: str = "shardmesh-webhook",
                 capacity: int = 256) -> None:
        self.core = client.CoreV1Api(api)
        self.component = component
        self.queue: queue.Queue[Obj] = queue.Queue(capacity)
        self.dropped = 0
        threading.Thread(target=self._run, name="events", daemon=True).start()

    def record(self, request: AdmissionRequest, decision: Decision) -> None:
        body = build(request, decision, self.component)
        if body is None:
            return
        try:
            self.queue.put_nowait(body)
        except queue.Full:
            self.dropped += 1
            event("event queue full; dropped an Event", logging.WARNING, dropped=self.dropped)

    def _run(self) -> None:
        while True:
            body = self.queue.get()
            try:
                self.core.create_namespaced_event(body["metadata"]["namespace"], body,  # type: ignore[arg-type]
                                                  _request_timeout=5)
            except Exception as err:  # an Event is best effort; admission already answered
                event("could not post an Event", logging.WARNING, error=str(err)[:300])
