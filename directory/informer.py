"""One StatefulSet's informer: the shared list-then-watch loop, feeding the hub.

The watching itself is ``sidecar.listwatch.StatefulSetWatch``, the very loop a
sidecar's direct mode runs (narrow: the StatefulSet by name, its pods by its
own selector; full-jitter backoff; a broken watch resumes from its last
resourceVersion, only 410 Gone lists again, spread over a few seconds). So an
API-server restart costs at most one list per watch.

What the directory adds: every change recomputes the map with
``directory.maps.build`` (the sidecar's pure code) and hands it to ``deliver``
with the monotonic time it was applied; ``deliver`` passes it to the event
loop. Lists, events and broken watches are counted for ``/metrics`` and
``/v1/maps``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from directory import metrics
from directory.maps import DirMap, MapKey, build
from sidecar.listwatch import StatefulSetWatch

log = logging.getLogger("shardmesh.directory.informer")

Deliver = Callable[[DirMap, float], None]
#: The directory's metric labels for ``StatefulSetWatch._failed`` reasons.
_ERROR_LABELS = {"expired": "gone"}


class Informer(StatefulSetWatch):
    def __init__(self, key: MapKey, api: Any, deliver: Deliver) -> None:
        super().__init__(key.namespace, key.statefulset, api, str(key))
        self.key, self.deliver = key, deliver
        self.last: DirMap | None = None
        #: Lists per kind ("sts", "pods"), for /v1/maps: 1 each after a clean start.
        self.lists = {"sts": 0, "pods": 0}
        self.events = 0

    def _listed(self, kind: str, relist: bool) -> None:
        # Any list but the very first of a kind is a relist: after 410, or a new selector's.
        metrics.LISTS.labels(kind, "relist" if self.lists[kind] else "initial").inc()
        self.lists[kind] += 1

    def _event(self, kind: str) -> None:
        self.events += 1
        metrics.API_EVENTS.labels(kind).inc()

    def _failed(self, kind: str, reason: str) -> None:
        metrics.WATCH_ERRORS.labels(kind, _ERROR_LABELS.get(reason, reason)).inc()

    def _publish_locked(self) -> None:
        arrived = time.monotonic()
        previous = self.last.slot_map if self.last is not None else None
        current = build(self.key, self.sts, self.pods.values(), previous)
        if current == self.last:
            return  # e.g. a status heartbeat that changes nothing a client sees
        self.last = current
        self.deliver(current, arrived)
