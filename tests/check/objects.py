"""Kubernetes objects in their JSON wire form, as ``shardmesh check`` fetches them."""

from __future__ import annotations

from typing import Any


def namespace(name: str, *, annotations: dict[str, str] | None = None,
              labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}}}


def pod(name: str, ns: str, *, annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None, containers: tuple[str, ...] = ("app",),
        init: tuple[str, ...] = (), service_account: str | None = None,
        host_network: bool = False, owner: tuple[str, str] | None = None,
        phase: str = "Running", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "annotations": annotations or {},
                            "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec: dict[str, Any] = {"containers": [{"name": c} for c in containers]}
    if init:
        spec["initContainers"] = [{"name": c} for c in init]
    if service_account:
        spec["serviceAccountName"] = service_account
    if host_network:
        spec["hostNetwork"] = True
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}
