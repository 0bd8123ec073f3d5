"""What a kubelet would report for a pod: pure decisions, no I/O.

Rules:
- A pod's IP is a loopback address (127/8, which Linux routes to ``lo``, so a
  test can bind a server to it) derived from ``namespace/name``: the same pod
  name gets the same IP every time. 127.0.x.x is never used (127.0.0.1 and
  127.0.1.1 belong to the host).
- The "node" is this machine, so ``hostIP`` is 127.0.0.1.
- A pod being deleted, or finished, is left alone.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Iterator
from typing import Any

HOST_IP = "127.0.0.1"
FINISHED_PHASES = ("Succeeded", "Failed")

Pod = dict[str, Any]  # a pod as the API returns it in JSON (camelCase keys)


def candidate_ips(namespace: str, name: str) -> Iterator[str]:
    """Loopback IPs for a pod, best first; endless, each derived from a salted hash."""
    for salt in itertools.count():
        digest = hashlib.blake2b(f"{namespace}/{name}/{salt}".encode(), digest_size=3).digest()
        yield f"127.{1 + digest[0] % 254}.{digest[1]}.{1 + digest[2] % 254}"


class IpAllocator:
    """Hands each (namespace, name) a stable loopback IP that no other pod holds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_pod: dict[tuple[str, str], str] = {}
        self._taken: set[str] = set()

    def assign(self, namespace: str, name: str, ip: str) -> None:
        """Give a pod a chosen IP (e.g. one in a network namespace the API server can reach)."""
        with self._lock:
            self._by_pod[(namespace, name)] = ip
            self._taken.add(ip)

    def ip_for(self, namespace: str, name: str) -> str:
        key = (namespace, name)
        with self._lock:
            if key not in self._by_pod:
                ip = next(ip for ip in candidate_ips(namespace, name) if ip not in self._taken)
                self._by_pod[key] = ip
                self._taken.add(ip)
            return self._by_pod[key]


def _condition(pod: Pod, kind: str) -> dict[str, Any] | None:
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def _bool(value: bool) -> str:
    return "True" if value else "False"


def is_ready(pod: Pod) -> bool:
    cond = _condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def needs_update(pod: Pod, ip: str, ready: bool) -> bool:
    """True if the pod is live and does not yet look Running/``ready`` with ``ip``."""
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    if meta.get("deletionTimestamp") or status.get("phase") in FINISHED_PHASES:
        return False
    containers_ready = _condition(pod, "ContainersReady")
    return not (
        status.get("phase") == "Running"
        and status.get("podIP") == ip
        and is_ready(pod) == ready
        and containers_ready is not None
        and containers_ready.get("status") == _bool(ready)
    )


def _conditions(pod: Pod, ready: bool, now: str) -> list[dict[str, Any]]:
    wanted = {
        "PodReadyToStartContainers": True,
        "PodScheduled": True,
        "Initialized": True,
        "ContainersReady": ready,
        "Ready": ready,
    }
    out = []
    for kind, value in wanted.items():
        old = _condition(pod, kind)
        unchanged = old is not None and old.get("status") == _bool(value)
        since = old.get("lastTransitionTime") if unchanged and old else now
        out.append({"type": kind, "status": _bool(value), "lastTransitionTime": since,
                    "lastProbeTime": None})
    return out


def _container_status(container: dict[str, Any], ready: bool, started_at: str
                      ) -> dict[str, Any]:
    name = container["name"]
    image = container.get("image", "")
    return {
        "name": name,
        "image": image,
        "imageID": f"simulated://{image}",
        "containerID": f"simulated://{name}",
        "ready": ready,
        "started": True,
        "restartCount": 0,
        "state": {"running": {"startedAt": started_at}},
    }


def _init_status(container: dict[str, Any], ready: bool, started_at: str) -> dict[str, Any]:
    """Native sidecars (restartPolicy Always) keep running; other init containers finished."""
    if container.get("restartPolicy") == "Always":
        return _container_status(container, ready, started_at)
    status = _container_status(container, False, started_at)
    status["started"] = False
    status["state"] = {"terminated": {"exitCode": 0, "reason": "Completed",
                                      "startedAt": started_at, "finishedAt": started_at}}
    return status


def running_status_patch(pod: Pod, ip: str, ready: bool, now: str) -> dict[str, Any]:
    """The status-subresource patch that makes ``pod`` Running with ``ip`` and ``ready``."""
    spec, status = pod.get("spec", {}), pod.get("status", {})
    started = status.get("startTime") or now
    return {"status": {
        "phase": "Running",
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": started,
        "conditions": _conditions(pod, ready, now),
        "containerStatuses": [_container_status(c, ready, started)
                              for c in spec.get("containers") or []],
        "initContainerStatuses": [_init_status(c, ready, started)
                                  for c in spec.get("initContainers") or []],
    }}
