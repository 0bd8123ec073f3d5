"""``shardmesh check``: the slot maps (SPEC §6) of the StatefulSets that clients route to.

A bad map is one the sidecars refuse (they keep their last good map, and a new
sidecar has none: nothing is routed); a map without an assignment routes
nothing until ``shardmesh reshard --init``; slots owned by an ordinal the
StatefulSet no longer has are unavailable until a reshard moves them. Pure,
apart from ``slot_section``'s fetch through the cluster edge.
"""

from __future__ import annotations

from collections.abc import Callable

from shardmesh.check_model import FAIL, OK, WARN, Finding, Obj, annotations_of
from shardmesh.check_optin import Scope
from sidecar.annotations import BACKEND, AnnotationError, parse_backends
from sidecar.slots import SlotError, parse

CHECK = "slots"


def slot_targets(scope: Scope) -> list[tuple[str, str]]:
    """(namespace, StatefulSet) of every route an injectable pod declares."""
    found: set[tuple[str, str]] = set()
    for ns in scope.namespaces:
        for pod in scope.pods.get(ns, ()):
            try:
                backends = parse_backends(annotations_of(pod).get(BACKEND) or "", ns)
            except AnnotationError:
                continue  # reported by the rbac check
            found.update((b.namespace, b.statefulset) for b in backends)
    return sorted(found)


def slot_findings(namespace: str, name: str, sts: Obj | None) -> list[Finding]:
    """What is wrong with the StatefulSet's slot map; nothing for default mode."""
    if sts is None:
        return []
    where = f"statefulset {namespace}/{name}"
    spec = sts.get("spec") or {}
    start = (spec.get("ordinals") or {}).get("start") or 0
    replicas = spec.get("replicas")
    replicas = 1 if replicas is None else replicas
    if type(start) is not int or type(replicas) is not int:
        return []  # the sidecars report a bad spec themselves
    try:
        smap = parse(annotations_of(sts), start)
    except SlotError as err:
        return [Finding(FAIL, CHECK, f"{where}: {err}; sidecars keep their last good map "
                        "and a new one routes nothing",
                        (f"kubectl -n {namespace} get sts {name} -o jsonpath="
                         "'{.metadata.annotations}'",))]
    if smap is None:
        return []
    if smap.assignment is None:
        return [Finding(WARN, CHECK, f"{where}: shard.io/slots={smap.slots} but no assignment: "
                        "requests are answered 503 shard_map_not_ready",
                        (f"shardmesh reshard {name} -n {namespace} --init",))]
    outside = smap.assignment.outside(start, replicas)
    if outside:
        held = ", ".join(f"ordinal {o}: {n} slots" for o, n in sorted(outside.items()))
        last = start + replicas - 1
        return [Finding(WARN, CHECK, f"{where}: slots owned by ordinals outside {start}..{last} "
                        f"are unavailable ({held})",
                        (f"shardmesh reshard {name} -n {namespace} --to {replicas}",))]
    moving = f", {len(smap.in_flight)} slots in flight" if smap.in_flight else ""
    return [Finding(OK, CHECK, f"{where}: {smap.slots} slots at epoch {smap.epoch}{moving}")]


def slot_section(scope: Scope, statefulset: Callable[[str, str], Obj | None]) -> list[Finding]:
    """``statefulset`` fetches one (None if absent) and raises ValueError when it cannot."""
    findings: list[Finding] = []
    for namespace, name in slot_targets(scope):
        try:
            sts = statefulset(namespace, name)
        except ValueError as err:
            findings.append(Finding(WARN, CHECK, f"statefulset {namespace}/{name}: slot map "
                                    f"not checked: {err}"))
            continue
        findings += slot_findings(namespace, name, sts)
    return findings
