"""Read-only helpers over a pod (or pod template) given as a plain JSON dict.

The webhook works on the wire format directly, not on kubernetes client
models: the patch is computed between two dicts, and the dicts are what the
API server sent, without any client-side defaulting or dropped fields.
"""

from __future__ import annotations

from typing import Any, Final

Obj = dict[str, Any]

SIDECAR_NAME: Final = "shard-router"
MIRROR_ANNOTATION: Final = "kubernetes.io/config.mirror"


def metadata(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def spec(obj: Obj) -> Obj:
    value = obj.get("spec")
    return value if isinstance(value, dict) else {}


def annotations_of(obj: Obj) -> dict[str, str]:
    value = metadata(obj).get("annotations")
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def labels_of(obj: Obj) -> dict[str, str]:
    value = metadata(obj).get("labels")
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def containers(pod: Obj, field: str) -> list[Obj]:
    value = spec(pod).get(field)
    return [c for c in value if isinstance(c, dict)] if isinstance(value, list) else []


def has_sidecar(pod: Obj) -> bool:
    """True when any container or init container is the shard-router."""
    return any(
        c.get("name") == SIDECAR_NAME
        for field in ("initContainers", "containers")
        for c in containers(pod, field)
    )


def display_name(pod: Obj) -> str:
    """The name, or ``generateName*`` for pods the API server has not named yet."""
    meta = metadata(pod)
    return str(meta.get("name") or f"{meta.get('generateName', '')}*")
