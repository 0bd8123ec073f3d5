"""Pure: what the injected sidecars must be allowed to read, and what to do if they cannot.

Each sidecar watches the StatefulSet of every route and its pods, with its
pod's service account, in the route's namespace (``shard.io/backend``). So for
every service account used by an injectable pod (or ``default`` in an
opted-in namespace with no pods yet) and every namespace its pods route to,
it needs get/list/watch on ``statefulsets.apps`` and ``pods``. The I/O edge
asks the API server with SubjectAccessReviews, which see every RBAC path
(RoleBindings, ClusterRoleBindings, group bindings) exactly as the sidecar's
requests will.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from shardmesh.check_model import FAIL, OK, WARN, Finding, Obj, annotations_of, name_of
from shardmesh.check_optin import Scope
from sidecar.annotations import BACKEND, AnnotationError, parse_backends

VERBS: Final = ("get", "list", "watch")
#: (API group, resource) pairs the sidecar reads.
RESOURCES: Final = (("apps", "statefulsets"), ("", "pods"))


@dataclass(frozen=True, order=True)
class Permission:
    group: str
    resource: str
    verb: str

    @property
    def resource_name(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource


PERMISSIONS: Final = tuple(Permission(g, r, v) for g, r in RESOURCES for v in VERBS)


@dataclass(frozen=True, order=True)
class Requirement:
    """Service account ``namespace/service_account`` must read routes in ``target``."""

    namespace: str
    service_account: str
    target: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups a service-account token carries, so group bindings count too."""
        return ("system:serviceaccounts", f"system:serviceaccounts:{self.namespace}",
                "system:authenticated")


def service_account_of(pod: Obj) -> str:
    spec = pod.get("spec") or {}
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def requirements(scope: Scope) -> tuple[list[Requirement], list[Finding]]:
    """Every (service account, target namespace) pair to check, plus unparsable routes."""
    needed: set[Requirement] = set()
    problems: list[Finding] = []
    for ns in scope.namespaces:
        pods = scope.pods.get(ns, ())
        if not pods:
            needed.add(Requirement(ns, "default", ns))
        for pod in pods:
            sa = service_account_of(pod)
            for target in _targets(pod, ns, problems):
                needed.add(Requirement(ns, sa, target))
    return sorted(needed), problems


def _targets(pod: Obj, ns: str, problems: list[Finding]) -> set[str]:
    """Namespaces the pod's routes point at; its own when it declares none."""
    value = annotations_of(pod).get(BACKEND)
    if not value:
        return {ns}
    try:
        return {backend.namespace for backend in parse_backends(value, ns)}
    except AnnotationError as err:
        problems.append(Finding(WARN, "rbac", f"pod {ns}/{name_of(pod)}: {err}; "
                                "checked its own namespace only"))
        return {ns}


def binding_name(req: Requirement, clusterrole: str) -> str:
    if req.target == req.namespace:
        return f"{clusterrole}-{req.service_account}"
    return f"{clusterrole}-{req.namespace}-{req.service_account}"


def rolebinding_command(req: Requirement, clusterrole: str) -> str:
    return (f"kubectl create rolebinding {binding_name(req, clusterrole)} -n {req.target} "
            f"--clusterrole={clusterrole} --serviceaccount={req.namespace}:{req.service_account}")


def rbac_findings(
    missing: Mapping[Requirement, tuple[Permission, ...]],
    clusterrole: str,
    clusterrole_exists: bool,
) -> list[Finding]:
    """One line per requirement; ``missing`` holds the denied permissions of each."""
    findings: list[Finding] = []
    if any(missing.values()) and not clusterrole_exists:
        findings.append(Finding(FAIL, "rbac", f"ClusterRole '{clusterrole}' not found: the "
                                "sidecar's RoleBindings refer to it",
                                ("install it: kubectl apply -k manifests/",
                                 "or name yours with --sidecar-clusterrole NAME")))
    for req in sorted(missing):
        denied = missing[req]
        who = f"service account '{req.service_account}' in namespace '{req.namespace}'"
        if not denied:
            findings.append(Finding(OK, "rbac", f"{who} can get/list/watch statefulsets.apps "
                                    f"and pods in namespace '{req.target}'"))
            continue
        findings.append(Finding(FAIL, "rbac", f"{who} cannot {_summary(denied)} in namespace "
                                f"'{req.target}': its sidecars cannot build their shard maps",
                                (rolebinding_command(req, clusterrole),)))
    return findings


def _summary(denied: tuple[Permission, ...]) -> str:
    by_resource: dict[str, list[str]] = {}
    for perm in sorted(denied, key=PERMISSIONS.index):
        by_resource.setdefault(perm.resource_name, []).append(perm.verb)
    return "; ".join(f"{'/'.join(verbs)} {res}" for res, verbs in by_resource.items())
