"""A StatefulSet's map as the directory publishes it: pure, no I/O.

The directory sends the *inputs* of the sidecar's map, not a finished route:
the StatefulSet's replicas, ordinals start and template port, and each of its
own pods (ordinal, ready, IP) exactly as ``sidecar.discovery.pod_info`` judges
them; plus, in slot mode, the canonical slot annotations. The sidecar feeds
them to the same ``sidecar.discovery.snapshot`` it uses for a direct watch
(with its route's port), so both modes produce the same map by construction.

Slot mode keeps the last good slot map when the annotations go bad or would
move backwards (``sidecar.slot_routing.supersedes``), and says why in
``slot_problem``; the StatefulSet being deleted forgets it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar import slots
from sidecar.discovery import PodInfo, StatefulSetInfo, pod_info, statefulset_info
from sidecar.slot_routing import supersedes

Obj = dict[str, Any]


@dataclass(frozen=True)
class MapKey:
    namespace: str
    statefulset: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.statefulset}"


@dataclass(frozen=True)
class DirMap:
    """One StatefulSet's map. ``found`` is False when the StatefulSet does not exist."""

    key: MapKey
    found: bool
    sts: StatefulSetInfo | None
    #: The StatefulSet's own pods (any ordinal), ordered by ordinal.
    pods: tuple[PodInfo, ...]
    #: The last good slot map (None: not in slot mode).
    slot_map: slots.SlotMap | None
    #: Why the slot annotations were not taken ("" when they were).
    slot_problem: str = ""

    @property
    def problem(self) -> str:
        if not self.found:
            return f"statefulset {self.key} not found"
        return self.sts.problem if self.sts is not None else ""


def build(key: MapKey, sts: Obj | None, pods: Iterable[PodInfo],
          previous: slots.SlotMap | None) -> DirMap:
    """The map of ``key`` from its StatefulSet (JSON, None when absent) and its pods."""
    own = tuple(sorted(pods, key=lambda p: p.ordinal))
    if sts is None:
        return DirMap(key, False, None, (), None)
    info = statefulset_info(sts)
    annotations: Mapping[str, str] = (sts.get("metadata") or {}).get("annotations") or {}
    slot_map, problem = previous, ""
    try:
        parsed = slots.parse(annotations, info.start)
    except slots.SlotError as err:
        problem = f"{err}; keeping the last good slot map"
    else:
        if parsed is None:
            slot_map = None
        else:
            refusal = supersedes(previous, parsed)
            if refusal:
                problem = f"{refusal}; keeping the last good slot map"
            else:
                slot_map = parsed
    return DirMap(key, True, info, own, slot_map, problem)


def own_pod(pod: Obj, statefulset: str) -> PodInfo | None:
    """``pod`` as one of the StatefulSet's ordinals (sidecar.discovery's rule), or None."""
    return pod_info(pod, statefulset)


def to_wire(m: DirMap) -> Obj:
    """The ``map`` object of a snapshot (README, "The directory": wire format)."""
    sts = m.sts
    return {
        "namespace": m.key.namespace, "statefulset": m.key.statefulset, "found": m.found,
        "replicas": sts.replicas if sts else 0, "start": sts.start if sts else 0,
        "port": sts.template_port if sts else None, "problem": m.problem or None,
        "pods": [{"ordinal": p.ordinal, "name": p.name, "ready": p.ready, "ip": p.ip}
                 for p in m.pods],
        "slots": m.slot_map.annotations() if m.slot_map is not None else None,
        "slot_problem": m.slot_problem or None,
    }


@dataclass(frozen=True)
class Inputs:
    """What a client gets back from a wire map: ``sidecar.discovery.snapshot``'s arguments
    and the slot map."""

    sts: StatefulSetInfo | None
    pods: tuple[PodInfo, ...]
    slot_map: slots.SlotMap | None
    problem: str


def from_wire(doc: Obj) -> Inputs:
    """The inverse of ``to_wire``; raises ValueError naming the bad field."""
    try:
        pods = tuple(PodInfo(ordinal=int(p["ordinal"]), ready=bool(p["ready"]),
                             ip=p.get("ip") or None, name=str(p["name"]))
                     for p in doc.get("pods") or [])
        sts = None
        if doc.get("found"):
            port = doc.get("port")
            sts = StatefulSetInfo(replicas=int(doc["replicas"]),
                                  template_port=None if port is None else int(port),
                                  start=int(doc.get("start") or 0),
                                  problem=str(doc.get("problem") or ""))
        raw = doc.get("slots")
        slot_map = slots.parse(raw, sts.start if sts else 0) if raw else None
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"invalid directory map {doc.get('namespace')}/"
                         f"{doc.get('statefulset')}: {type(err).__name__}: {err}") from None
    return Inputs(sts, pods, slot_map, str(doc.get("problem") or ""))
