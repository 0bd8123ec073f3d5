"""Pure: what the injected sidecars must be allowed to read, and what to do if they cannot.

A route in **direct** mode (``shard.io/discovery: direct``, or no directory
configured in the webhook) watches its StatefulSet and pods with the pod's
service account in the route's namespace (``shard.io/backend``): it needs
get/list/watch on ``statefulsets.apps`` and ``pods`` there. A route in
**directory** mode needs nothing for its own namespace (``directory.access``
says why) and, for another namespace, get/watch on the virtual
``shardmaps.shard.io`` there (or, as the directory also accepts, the direct
rights). Checked for every service account used by an injectable pod (or
``default`` in an opted-in namespace with no pods yet). The I/O edge asks the
API server with SubjectAccessReviews, which see every RBAC path (RoleBindings,
ClusterRoleBindings, group bindings) exactly as the directory's reviews will.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from shardmesh.check_model import FAIL, OK, WARN, Finding, Obj, annotations_of, name_of
from shardmesh.check_optin import Scope
from sidecar.annotations import BACKEND, AnnotationError, discovery_for, parse_backends

VERBS: Final = ("get", "list", "watch")
#: (API group, resource) pairs the sidecar reads.
RESOURCES: Final = (("apps", "statefulsets"), ("", "pods"))
DIRECT: Final = "direct"
DIRECTORY: Final = "directory"
#: The ClusterRole (manifests/base/shardmap-reader-clusterrole.yaml) granting shardmaps.
SHARDMAP_READER: Final = "shardmesh-shardmap-reader"


@dataclass(frozen=True, order=True)
class Permission:
    group: str
    resource: str
    verb: str

    @property
    def resource_name(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource


PERMISSIONS: Final = tuple(Permission(g, r, v) for g, r in RESOURCES for v in VERBS)
#: What the directory asks of a caller from another namespace (directory/access.py).
SHARDMAP_PERMISSIONS: Final = tuple(Permission("shard.io", "shardmaps", v)
                                    for v in ("get", "watch"))


@dataclass(frozen=True, order=True)
class Requirement:
    """Service account ``namespace/service_account`` must read routes in ``target``,
    directly or through the directory (``mode``)."""

    namespace: str
    service_account: str
    target: str
    mode: str = DIRECT

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


def requirements(scope: Scope, directory: bool = False
                 ) -> tuple[list[Requirement], list[Finding]]:
    """Every (service account, target namespace, mode) to check, plus unparsable routes.
    ``directory``: the webhook injects sidecars to use a directory (their default mode).
    A directory-mode route to its own namespace needs nothing, so it is left out."""
    default = DIRECTORY if directory else DIRECT
    needed: set[Requirement] = set()
    problems: list[Finding] = []
    for ns in scope.namespaces:
        pods = scope.pods.get(ns, ())
        if not pods:
            needed.add(Requirement(ns, "default", ns, default))
        for pod in pods:
            sa = service_account_of(pod)
            for target, mode in _targets(pod, ns, default, problems):
                needed.add(Requirement(ns, sa, target, mode))
    return sorted(r for r in needed if needs_rights(r)), problems


def needs_rights(req: Requirement) -> bool:
    return req.mode == DIRECT or req.target != req.namespace


def alternatives(req: Requirement) -> tuple[tuple[Permission, ...], ...]:
    """Sets of permissions, any one of which wholly granted suffices; the first is the one
    to ask for."""
    if req.mode == DIRECTORY:
        return (SHARDMAP_PERMISSIONS, PERMISSIONS)
    return (PERMISSIONS,)


def denied(req: Requirement, allowed: Mapping[Permission, bool]) -> tuple[Permission, ...]:
    """The permissions to report missing (empty: the requirement is met)."""
    options = alternatives(req)
    if any(all(allowed.get(p, False) for p in option) for option in options):
        return ()
    return tuple(p for p in options[0] if not allowed.get(p, False))


def _targets(pod: Obj, ns: str, default: str, problems: list[Finding]) -> set[tuple[str, str]]:
    """(namespace, discovery mode) of each of the pod's routes; its own namespace when it
    declares none."""
    annotations = annotations_of(pod)
    value = annotations.get(BACKEND)
    if not value:
        return {(ns, _mode(annotations, "", default, pod, ns, problems))}
    try:
        return {(b.namespace, _mode(annotations, b.route, default, pod, ns, problems))
                for b in parse_backends(value, ns)}
    except AnnotationError as err:
        problems.append(Finding(WARN, "rbac", f"pod {ns}/{name_of(pod)}: {err}; "
                                "checked its own namespace only"))
        return {(ns, default)}


def _mode(annotations: Mapping[str, str], route: str, default: str, pod: Obj, ns: str,
          problems: list[Finding]) -> str:
    try:
        return discovery_for(annotations, route) or default
    except AnnotationError as err:
        problems.append(Finding(WARN, "rbac", f"pod {ns}/{name_of(pod)}: {err}; "
                                "checked as direct"))
        return DIRECT


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
    if any(v for r, v in missing.items() if r.mode == DIRECT) and not clusterrole_exists:
        findings.append(Finding(FAIL, "rbac", f"ClusterRole '{clusterrole}' not found: the "
                                "sidecar's RoleBindings refer to it",
                                ("install it: kubectl apply -k manifests/",
                                 "or name yours with --sidecar-clusterrole NAME")))
    for req in sorted(missing):
        refused = missing[req]
        who = f"service account '{req.service_account}' in namespace '{req.namespace}'"
        wanted = alternatives(req)[0]
        if not refused:
            findings.append(Finding(OK, "rbac", f"{who} can {_summary(wanted)} in namespace "
                                    f"'{req.target}'{_via(req)}"))
            continue
        role = SHARDMAP_READER if req.mode == DIRECTORY else clusterrole
        findings.append(Finding(FAIL, "rbac", f"{who} cannot {_summary(refused)} in namespace "
                                f"'{req.target}'{_via(req)}: its sidecars cannot build their "
                                "shard maps", (rolebinding_command(req, role),)))
    return findings


def _via(req: Requirement) -> str:
    return " (through the directory)" if req.mode == DIRECTORY else ""


def _summary(denied: tuple[Permission, ...]) -> str:
    order = (*PERMISSIONS, *SHARDMAP_PERMISSIONS)
    by_resource: dict[str, list[str]] = {}
    for perm in sorted(denied, key=order.index):
        by_resource.setdefault(perm.resource_name, []).append(perm.verb)
    return "; ".join(f"{'/'.join(verbs)} {res}" for res, verbs in by_resource.items())
