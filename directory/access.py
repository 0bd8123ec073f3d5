"""Who may read a StatefulSet's shard map. Pure: no I/O, the reviews are the caller's.

The rule (SPEC §7, issue 14):

1. **Same namespace, no binding.** A service account may read the maps of
   StatefulSets in its own namespace. A map holds only ordinals, readiness, pod
   IPs, the container port and the slot map: what any pod in the namespace can
   already learn by connecting to the StatefulSet's headless Service. It holds
   no pod spec, environment or secret. So a sidecar needs no Kubernetes read
   rights at all, and no per-namespace RoleBinding that would let it (and its
   app) read full pod specs.
2. **Anyone else** (another namespace's service account, or a user): a
   SubjectAccessReview must allow the *virtual* resource ``shardmaps`` in API
   group ``shard.io``, resource name = the StatefulSet, in its namespace, verb
   ``get`` (resolve, maps) or ``watch`` (the stream). Nothing serves that
   resource; RBAC only records the grant (``manifests/base/shardmap-reader.yaml``
   is a ClusterRole to bind). For compatibility the old direct-watch rights
   (get/list/watch that StatefulSet, list/watch pods) also suffice.

A 403 names the ``shardmaps`` permission only: that is the one to grant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

GROUP: Final = "shard.io"
RESOURCE: Final = "shardmaps"
#: The reader ClusterRole shipped in manifests/ for cross-namespace access.
READER_CLUSTERROLE: Final = "shardmesh-shardmap-reader"
_SA_PREFIX: Final = "system:serviceaccount:"


@dataclass(frozen=True)
class Need:
    """One SubjectAccessReview's resource attributes (namespace is the map's)."""

    verb: str
    group: str
    resource: str
    name: str | None = None

    def describe(self, namespace: str) -> str:
        group = f".{self.group}" if self.group else ""
        what = f"{self.resource}{group}" + (f" '{self.name}'" if self.name else "")
        return f"{self.verb} {what} in namespace '{namespace}'"


def service_account_namespace(username: str, groups: tuple[str, ...]) -> str | None:
    """The namespace of a service-account user, else None.

    Both the username and the per-namespace group the API server gives every
    service-account token must agree, so a user from another authenticator
    named like one (the ``system:`` prefix is reserved, but cheap to check)
    does not pass.
    """
    if not username.startswith(_SA_PREFIX):
        return None
    namespace, sep, name = username[len(_SA_PREFIX):].partition(":")
    if not (namespace and sep and name):
        return None
    return namespace if f"system:serviceaccounts:{namespace}" in groups else None


def same_namespace(username: str, groups: tuple[str, ...], namespace: str) -> bool:
    """Rule 1: needs no review at all."""
    return service_account_namespace(username, groups) == namespace


def shardmap_need(verb: str, statefulset: str) -> Need:
    return Need(verb, GROUP, RESOURCE, statefulset)


def direct_watch_needs(statefulset: str) -> tuple[Need, ...]:
    """What a sidecar's own direct watch needs; still accepted (rule 2, compatibility)."""
    return (Need("get", "apps", "statefulsets", statefulset),
            Need("list", "apps", "statefulsets", statefulset),
            Need("watch", "apps", "statefulsets", statefulset),
            Need("list", "", "pods"), Need("watch", "", "pods"))


def alternatives(verb: str, statefulset: str) -> tuple[tuple[Need, ...], ...]:
    """Rule 2: sets of permissions, any one of which, wholly allowed, grants the map.
    The first is the one to ask for."""
    if verb not in ("get", "watch"):
        raise ValueError(f"verb {verb!r}: a shard map is read with 'get' or 'watch'")
    return ((shardmap_need(verb, statefulset),), direct_watch_needs(statefulset))


def missing(verb: str, statefulset: str, namespace: str, allowed: Mapping[Need, bool]
            ) -> tuple[str, ...]:
    """What to name in a 403 (empty: allowed). A need absent from ``allowed`` is denied."""
    options = alternatives(verb, statefulset)
    if any(all(allowed.get(n, False) for n in option) for option in options):
        return ()
    return tuple(n.describe(namespace) for n in options[0])
