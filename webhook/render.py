"""Render the shard-router sidecar and the volumes it needs, and place them in a pod.

Pure functions over plain dicts. ``mutate`` returns a new pod; the input is
never changed (unchanged parts are shared, not copied), so the patch step
can diff the two.

Placement: on Kubernetes >= 1.29 the sidecar is a *native* sidecar, an init
container with ``restartPolicy: Always`` placed first among the init
containers, so that it is up before the other init containers and the app
start (its startupProbe gates them) and it does not keep a Job's pod alive.
Before 1.29 it is a regular container placed first, which is the closest
the kubelet gets to "start it first".
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any, Final

from sidecar import annotations as ann
from sidecar import pod_checks
from webhook.podview import SIDECAR_NAME, Obj, spec
from webhook.settings import Settings

ADMIN_PORT: Final = 15020
PODINFO_VOLUME: Final = "shard-podinfo"  # also in policy.SIDECAR_VOLUMES
PODINFO_DIR: Final = "/etc/shard"
ANNOTATIONS_FILE: Final = f"{PODINFO_DIR}/annotations"
TOKEN_VOLUME: Final = "shard-token"  # also in policy.SIDECAR_VOLUMES
TOKEN_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
#: What the API server's own kube-api-access volumes use (1h plus a few seconds,
#: which marks the token as kubelet-refreshed for the legacy-token metrics).
TOKEN_EXPIRATION_S: Final = 3607
NONROOT_UID: Final = 65532


def sidecar_command() -> list[str]:
    """The contract with ``shardmesh sidecar`` (sidecar/cli.py): the routes come from
    the pod's annotations file; ``--listen``/``--admin`` keep their defaults
    (127.0.0.1:15001 for data, 0.0.0.0:15020 for health and metrics)."""
    return ["shardmesh", "sidecar", "--annotations-file", ANNOTATIONS_FILE]


def _probe(path: str, period_s: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": path, "port": ADMIN_PORT, "scheme": "HTTP"},
        "periodSeconds": period_s,
        "timeoutSeconds": 1,
        "failureThreshold": failures,
    }


def _field_env(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def sidecar_container(pod_annotations: Mapping[str, str], settings: Settings, native: bool,
                      mount_token: bool) -> Obj:
    """The shard-router container. Resources come from the (already validated)
    ``shard.io/sidecar-*`` annotations over the defaults.

    The result is shared between calls (memoised: every pod of a rollout gets
    the same container), so it must be treated as read-only, as the rest of
    the rendered pod already is.
    """
    wanted = tuple((k, pod_annotations[k]) for k in ann.RESOURCE_OPTIONS if k in pod_annotations)
    return _sidecar_container(wanted, settings, native, mount_token)


@functools.lru_cache(maxsize=256)
def _sidecar_container(resource_annotations: tuple[tuple[str, str], ...], settings: Settings,
                       native: bool, mount_token: bool) -> Obj:
    resources = pod_checks.parse_resources(dict(resource_annotations))
    mounts = [{"name": PODINFO_VOLUME, "mountPath": PODINFO_DIR, "readOnly": True}]
    if mount_token:
        mounts.append({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True})
    container: Obj = {
        "name": SIDECAR_NAME,
        "image": settings.sidecar_image,
        "imagePullPolicy": "IfNotPresent",
        "command": sidecar_command(),
        "env": [_field_env("POD_NAME", "metadata.name"),
                _field_env("POD_NAMESPACE", "metadata.namespace"), *_directory_env(settings)],
        "ports": [{"name": "shard-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "readinessProbe": _probe("/readyz", 2, 3),
        "livenessProbe": _probe("/healthz", 10, 3),
        "resources": _resources(resources),
        "securityContext": _security_context(),
        "volumeMounts": mounts,
    }
    if native:
        # Gates the next init containers and the app until the process answers;
        # /healthz, not /readyz, so a missing backend cannot wedge pod start-up.
        container["startupProbe"] = _probe("/healthz", 1, 30)
        container["restartPolicy"] = "Always"
    return container


def _directory_env(settings: Settings) -> list[Obj]:
    """The directory, for routes without ``shard.io/discovery: direct`` (sidecar/cli.py):
    its URL and the PEM of its CA, inline, so no namespace needs anything of ours."""
    if not (settings.directory_url and settings.directory_ca):
        return []
    return [{"name": "SHARDMESH_DIRECTORY_URL", "value": settings.directory_url},
            {"name": "SHARDMESH_DIRECTORY_CA", "value": settings.directory_ca}]


def _resources(resources: pod_checks.Resources) -> Obj:
    out: Obj = {}
    if resources.limits:
        out["limits"] = dict(resources.limits)
    if resources.requests:
        out["requests"] = dict(resources.requests)
    return out


def _security_context() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": NONROOT_UID,
        "runAsGroup": NONROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def podinfo_volume() -> Obj:
    """The pod's annotations as the file the sidecar reads and watches."""
    items = [{"path": "annotations",
              "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.annotations"}}]
    return {"name": PODINFO_VOLUME, "downwardAPI": {"items": items}}


def token_volume() -> Obj:
    """What the ServiceAccount admission plugin would have mounted: a bound token,
    the cluster CA and the namespace. Only for pods that opt out of automount,
    because the sidecar must still watch its StatefulSets."""
    sources: list[Obj] = [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRATION_S}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
            "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]
    return {"name": TOKEN_VOLUME, "projected": {"sources": sources}}


def needs_own_token(pod: Obj) -> bool:
    """Only an explicit ``automountServiceAccountToken: false`` on the pod removes the
    default token. When it is left on, the ServiceAccount admission plugin mounts
    it into the sidecar too (the API server re-runs it after a webhook mutates)."""
    return spec(pod).get("automountServiceAccountToken") is False


def mutate(pod: Obj, pod_annotations: Mapping[str, str], settings: Settings) -> Obj:
    """A new pod with the sidecar and its volumes in place (no status yet).

    Only the dicts and lists on the changed paths are new; everything else is
    shared with ``pod`` (never modified), which keeps a review well under a
    millisecond where a deep copy of a large pod would not.
    """
    own_token = needs_own_token(pod)
    native = settings.native_sidecar
    sidecar = sidecar_container(pod_annotations, settings, native, own_token)
    field = "initContainers" if native else "containers"
    pod_spec = dict(pod.get("spec") or {})
    pod_spec[field] = [sidecar, *(pod_spec.get(field) or [])]
    volumes = [podinfo_volume(), *([token_volume()] if own_token else [])]
    pod_spec["volumes"] = [*(pod_spec.get("volumes") or []), *volumes]
    return {**pod, "spec": pod_spec}


def status(settings: Settings, routes: tuple[ann.RouteSpec, ...], pod: Obj) -> str:
    """The ``shard.io/status`` value: what was injected, by which version."""
    native = settings.native_sidecar
    value: dict[str, Any] = {
        "version": settings.version,
        "initContainers" if native else "containers": [SIDECAR_NAME],
        "volumes": [PODINFO_VOLUME, *([TOKEN_VOLUME] if needs_own_token(pod) else [])],
        "routes": [r.name for r in routes],
    }
    return json.dumps(value, separators=(",", ":"))


def with_status(pod: Obj, value: str) -> Obj:
    """A new pod (sharing unchanged parts) with the ``shard.io/status`` annotation."""
    meta = dict(pod.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), ann.STATUS: value}
    return {**pod, "metadata": meta}
