"""A pod of a StatefulSet as discovery sees it: its ordinal and readiness. Pure.

- A pod's ordinal is its own: its ``apps.kubernetes.io/pod-index`` label, or the
  number in its name where the label is absent. A pod counts only if it is
  named ``S-<n>``, a StatefulSet named S owns it, and its label (if any) says
  n too: a stray pod that merely looks like ``S-1`` must never receive traffic.
- It is ready iff it has Ready=True, no deletionTimestamp and a pod IP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: Set by the StatefulSet controller (Kubernetes >= 1.28) to the pod's ordinal.
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
#: An ordinal as the controller writes it, in names and in the label.
_ORDINAL = r"(?:0|[1-9][0-9]*)"
#: An API object as JSON.
Obj = dict[str, Any]


@dataclass(frozen=True)
class PodInfo:
    ordinal: int
    ready: bool
    ip: str | None
    name: str


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

