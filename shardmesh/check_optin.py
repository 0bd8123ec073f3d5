"""Pure: which namespaces and pods are opted in, and which pods lack the sidecar.

The opt-in rules are the webhook's own (``webhook.policy``, SPEC §1):
``shard.io/inject`` as an annotation or a label, on the pod or its namespace,
the pod's setting winning; hostNetwork and mirror pods, the system namespaces,
the injector's own and (through the webhook's namespaceSelector) any namespace
labelled ``shard.io/admission-webhooks=disabled`` are never injected.
A pod that should carry ``shard-router`` but does not was created while the
webhook was down (``failurePolicy: Ignore`` let it through): only re-creating
it injects it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from shardmesh.check_model import FAIL, OK, WARN, Finding, Obj, annotations_of, labels_of, name_of
from sidecar.annotations import ADMISSION_WEBHOOKS_LABEL, INJECT
from webhook.podview import MIRROR_ANNOTATION, SIDECAR_NAME, has_sidecar
from webhook.policy import SYSTEM_NAMESPACES, SettingError, inject_setting

SIDECAR: Final = SIDECAR_NAME


@dataclass(frozen=True)
class Scope:
    """The opted-in part of the cluster."""

    #: Opted-in namespaces, sorted.
    namespaces: tuple[str, ...]
    #: Per opted-in namespace, the pods the webhook would inject (sorted by name).
    pods: Mapping[str, tuple[Obj, ...]]
    #: Invalid ``shard.io/inject`` values found on the way.
    problems: tuple[Finding, ...] = field(default=())


def never_injected(namespace: Obj | None, name: str, excluded: frozenset[str]) -> bool:
    if name in SYSTEM_NAMESPACES or name in excluded:
        return True
    labels = labels_of(namespace) if namespace is not None else {}
    return labels.get(ADMISSION_WEBHOOKS_LABEL) == "disabled"


def skipped(pod: Obj) -> bool:
    """Pods the webhook skips, or that no longer matter (finished, terminating)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    return bool(
        spec.get("hostNetwork")
        or MIRROR_ANNOTATION in annotations_of(pod)
        or pod.get("metadata", {}).get("deletionTimestamp")
        or status.get("phase") in ("Succeeded", "Failed")
    )


def opted_in(namespaces: Sequence[Obj], pods: Sequence[Obj], excluded: frozenset[str]) -> Scope:
    """Namespaces opted in themselves or through one of their pods, and their injectable pods."""
    by_name = {name_of(ns): ns for ns in namespaces}
    problems: list[Finding] = []
    ns_wants: dict[str, bool] = {}
    for name, ns in by_name.items():
        if not never_injected(ns, name, excluded):
            ns_wants[name] = _setting(ns, f"namespace '{name}'", problems) is True
    chosen = {n for n, wants in ns_wants.items() if wants}
    injectable: dict[str, list[Obj]] = {}
    for pod in pods:
        ns = pod.get("metadata", {}).get("namespace", "")
        if never_injected(by_name.get(ns), ns, excluded):
            continue
        setting = _setting(pod, f"pod {ns}/{name_of(pod)}", problems)
        wants = ns_wants.get(ns, False) if setting is None else setting
        if setting is True:
            chosen.add(ns)
        if wants and not skipped(pod):
            injectable.setdefault(ns, []).append(pod)
    return Scope(
        namespaces=tuple(sorted(chosen)),
        pods={ns: tuple(sorted(injectable.get(ns, []), key=name_of)) for ns in sorted(chosen)},
        problems=tuple(problems),
    )


def _setting(obj: Obj, what: str, problems: list[Finding]) -> bool | None:
    try:
        return inject_setting(obj, what)
    except SettingError as err:
        problems.append(Finding(WARN, "sidecar", f"{err}; the webhook rejects its pods"))
        return None


def sidecar_findings(scope: Scope) -> list[Finding]:
    """One line per opted-in namespace: every injectable pod carries ``shard-router``."""
    if not scope.namespaces:
        return [*scope.problems, Finding(OK, "sidecar", "no opted-in namespaces "
                                         f"(nothing has {INJECT}=true)")]
    findings = list(scope.problems)
    for ns in scope.namespaces:
        pods = scope.pods.get(ns, ())
        missing = [p for p in pods if not has_sidecar(p)]
        if missing:
            names = ", ".join(name_of(p) for p in missing)
            hints = tuple(dict.fromkeys(restart_hint(p) for p in missing))
            findings.append(Finding(FAIL, "sidecar", f"namespace '{ns}': {len(missing)} of "
                                    f"{len(pods)} opted-in pod(s) lack the {SIDECAR} sidecar "
                                    f"(created while the webhook was down?): {names}", hints))
        else:
            findings.append(Finding(OK, "sidecar", f"namespace '{ns}': all {len(pods)} "
                                    f"opted-in pod(s) carry {SIDECAR}"))
    return findings


_RESTARTABLE: Final = {"StatefulSet": "statefulset", "DaemonSet": "daemonset"}


def restart_hint(pod: Obj) -> str:
    """The command that re-creates the pod through the webhook."""
    name, ns = name_of(pod), pod.get("metadata", {}).get("namespace", "")
    refs = pod.get("metadata", {}).get("ownerReferences") or []
    owner = next((r for r in refs if r.get("controller")), None)
    if owner is None:
        return f"kubectl delete pod {name} -n {ns}, then create it again (it has no controller)"
    kind, owner_name = owner.get("kind", ""), owner.get("name", "")
    template_hash = labels_of(pod).get("pod-template-hash", "")
    if kind == "ReplicaSet" and template_hash and owner_name.endswith(f"-{template_hash}"):
        deployment = owner_name[: -len(template_hash) - 1]
        return f"kubectl rollout restart deployment/{deployment} -n {ns}"
    if kind in _RESTARTABLE:
        return f"kubectl rollout restart {_RESTARTABLE[kind]}/{owner_name} -n {ns}"
    return f"kubectl delete pod {name} -n {ns} (its {kind} {owner_name} re-creates it)"
