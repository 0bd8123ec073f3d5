"""Turn a stored pod's ``shard-router`` container into a local process, as a kubelet would.

Rules:
- Pure functions over the pod as the API server stored it (plain dicts,
  camelCase). Nothing here touches the network or the file system.
- Only what the container itself says is used: command + args, env (with
  ``valueFrom.fieldRef`` resolved from the pod), and its volume mounts. The one
  rewrite allowed is mapping a mount path to the local directory that holds
  that volume's files; an argument that names no mount path is left alone, so
  a wrong flag from the webhook reaches the sidecar as it is and fails there.
- Anything a kubelet would resolve but this one cannot (a Secret key, a
  resource field) raises PodSpecError naming it, rather than being guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.downward import format_downward_file

Obj = dict[str, Any]
SIDECAR = "shard-router"
#: The image's ENTRYPOINT (Dockerfile); used when a container gives only ``args``.
IMAGE_ENTRYPOINT = ("shardmesh",)
_SUBSCRIPT = re.compile(r"^metadata\.(annotations|labels)\['([^']+)'\]$")


class PodSpecError(ValueError):
    """The pod asks for something this stand-in kubelet cannot provide; says what."""


@dataclass(frozen=True)
class DownwardFile:
    """One file of a downward API volume: its path inside the mount and its content."""

    mount_path: str
    relative_path: str
    content: str


def find_container(pod: Obj, name: str = SIDECAR) -> tuple[Obj, bool]:
    """The named container and whether it is an init container (native sidecar)."""
    spec = pod.get("spec") or {}
    for field, is_init in (("initContainers", True), ("containers", False)):
        for container in spec.get(field) or []:
            if container.get("name") == name:
                return container, is_init
    raise PodSpecError(f"pod {pod['metadata'].get('name')!r} has no container named {name!r}")


def argv(container: Obj) -> list[str]:
    """Kubernetes semantics: ``command`` replaces the entrypoint, ``args`` follow it."""
    command = container.get("command") or list(IMAGE_ENTRYPOINT)
    return [*command, *(container.get("args") or [])]


def field_value(pod: Obj, path: str) -> str:
    """The value of a ``fieldRef.fieldPath`` for this pod, as the kubelet renders it."""
    meta = pod.get("metadata") or {}
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName"),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName"),
        "status.podIP": (pod.get("status") or {}).get("podIP"),
        "status.hostIP": (pod.get("status") or {}).get("hostIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    if path in ("metadata.annotations", "metadata.labels"):
        return format_downward_file(meta.get(path.split(".")[1]) or {})
    match = _SUBSCRIPT.match(path)
    if match:
        return str((meta.get(match[1]) or {}).get(match[2], ""))
    raise PodSpecError(f"unsupported fieldRef.fieldPath '{path}'")


def environment(pod: Obj, container: Obj) -> dict[str, str]:
    """The container's env, with ``valueFrom.fieldRef`` taken from the pod itself."""
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = str(var.get("value", ""))
            continue
        ref = var["valueFrom"].get("fieldRef")
        if ref is None:
            raise PodSpecError(f"env {name}: only valueFrom.fieldRef is supported here, "
                               f"got {sorted(var['valueFrom'])}")
        env[name] = field_value(pod, ref["fieldPath"])
    if container.get("envFrom"):
        raise PodSpecError(f"container {container['name']!r} uses envFrom, not supported here")
    return env


def _downward_items(volume: Obj) -> list[Obj] | None:
    """The downward API items of a volume (plain or projected), or None if it has none."""
    if "downwardAPI" in volume:
        items: list[Obj] = volume["downwardAPI"].get("items") or []
        return items
    if "projected" in volume:
        sources = volume["projected"].get("sources") or []
        found = [item for s in sources for item in (s.get("downwardAPI") or {}).get("items") or []]
        return found or None
    return None


def downward_files(pod: Obj, container: Obj) -> list[DownwardFile]:
    """Every downward API file the container sees through its volume mounts."""
    volumes = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}
    files: list[DownwardFile] = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise PodSpecError(f"volumeMount {mount['name']!r} names no volume of the pod")
        for item in _downward_items(volume) or []:
            if "fieldRef" not in item:
                raise PodSpecError(f"downward API item {item.get('path')!r} of volume "
                                   f"{mount['name']!r}: only fieldRef is supported here")
            files.append(DownwardFile(mount["mountPath"], item["path"],
                                      field_value(pod, item["fieldRef"]["fieldPath"])))
    return files


def translate(args: Sequence[str], mounts: Mapping[str, str]) -> tuple[list[str], set[str]]:
    """Map each mount path prefix in ``args`` (``PATH`` or ``--flag=PATH``) to its local dir.

    Returns the new arguments and the mount paths that were referenced.
    """
    used: set[str] = set()
    out: list[str] = []
    for arg in args:
        prefix, sep, value = arg.partition("=") if arg.startswith("-") and "=" in arg \
            else ("", "", arg)
        for mount_path, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                value = local + value[len(mount_path.rstrip("/")):]
                used.add(mount_path)
                break
        out.append(f"{prefix}{sep}{value}" if sep else value)
    return out, used


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The last value given to ``flag`` (``--f V`` or ``--f=V``), as argparse would take it."""
    found: str | None = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
    return found
