"""What ``shardmesh check`` reports, and how it reads the objects it fetched.

Design rules:
- Every check is a pure function from fetched objects (plain JSON dicts, in the
  API's own camelCase wire form) to a list of ``Finding``. Only
  ``check_cluster`` and ``check_probe`` talk to the network.
- A finding names the object it is about, so a user can ``kubectl get`` it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

Status = Literal["OK", "WARN", "FAIL"]
#: A Kubernetes object as the API serves it (``json.loads`` of the response).
Obj = dict[str, Any]

OK: Final[Status] = "OK"
WARN: Final[Status] = "WARN"
FAIL: Final[Status] = "FAIL"


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    status: Status
    #: Which check produced it: webhook, ca-bundle, serving-cert, endpoints, rbac, sidecar.
    check: str
    message: str
    #: Commands or objects that would fix it, shown under the line.
    hints: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "check": self.check, "message": self.message,
                "hints": list(self.hints)}


def worst(findings: Sequence[Finding]) -> Status:
    statuses = {f.status for f in findings}
    return FAIL if FAIL in statuses else WARN if WARN in statuses else OK


def name_of(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def namespace_of(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("namespace", ""))


def annotations_of(obj: Obj) -> Mapping[str, str]:
    return obj.get("metadata", {}).get("annotations") or {}


def labels_of(obj: Obj) -> Mapping[str, str]:
    return obj.get("metadata", {}).get("labels") or {}
