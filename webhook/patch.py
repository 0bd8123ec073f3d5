"""The JSON patch (RFC 6902) that turns the pod the API server sent into the injected one.

The patch is the diff of two plain dicts, so it only adds what injection added
and never rewrites fields that another webhook or the user set. It is made in
two steps so that the ``shard.io/status`` annotation is always the last
operation: a reader of the patch (or of an audit log) sees the status only
after everything it describes.
"""

from __future__ import annotations

import base64
import functools
from typing import Any

import jsonpatch
import orjson

from webhook.podview import Obj

Patch = list[dict[str, Any]]


#: Every path injection may change.
SIDECAR_PATHS: tuple[tuple[str, str], ...] = (
    ("spec", "initContainers"),
    ("spec", "containers"),
    ("spec", "volumes"),
)
STATUS_PATHS: tuple[tuple[str, str], ...] = (("metadata", "annotations"),)


class _Kept(str):
    """Stands in for a list item that the mutation kept (the very same object)."""


def skeleton(obj: Obj, paths: tuple[tuple[str, str], ...],
             originals: dict[int, _Kept]) -> Obj:
    """The parts of ``obj`` under ``paths``, with every list item that is one of
    ``originals`` (by identity) replaced by its short stand-in.

    jsonpatch compares list items by serialising them, which for a real pod
    (containers with long env lists) costs far more than the rest of a review.
    ``render`` shares unchanged items with the original pod, so comparing
    stand-ins gives the same operations, for a fraction of the cost.
    """
    out: Obj = {}
    for parent, key in paths:
        if not isinstance(obj.get(parent), dict):
            continue
        branch = out.setdefault(parent, {})
        if key in obj[parent]:
            value = obj[parent][key]
            if isinstance(value, list):
                value = [originals.get(id(item), item) for item in value]
            branch[key] = value
    return out


def _stand_ins(original: Obj) -> dict[int, _Kept]:
    return {
        id(item): _Kept(f"kept:{parent}.{key}[{i}]")
        for parent, key in SIDECAR_PATHS
        for i, item in enumerate((original.get(parent) or {}).get(key) or [])
    }


def _diff(before: Obj, after: Obj) -> Patch:
    ops: Patch = jsonpatch.make_patch(before, after).patch
    return ops


def _cached_diff(before: Obj, after: Obj) -> Patch:
    """``_diff``, memoised on the exact JSON of both skeletons.

    Pods of one rollout share a template, so their skeletons (stand-ins plus
    the rendered sidecar) are identical and jsonpatch's diff, the costliest
    step of a review, runs once per template. Serialising a skeleton costs a
    tenth of diffing it, and equal text means equal input, so the cached
    operations are exactly what jsonpatch would return.
    """
    ops: Patch = orjson.loads(_diff_text(orjson.dumps(before, option=_KEYS),
                                         orjson.dumps(after, option=_KEYS)))
    return ops


#: A YAML pod given to ``shardmesh inject`` may have non-string keys; the
#: text only has to be a faithful cache key, so let orjson write them.
_KEYS = orjson.OPT_NON_STR_KEYS


@functools.lru_cache(maxsize=512)
def _diff_text(before: bytes, after: bytes) -> bytes:
    return orjson.dumps(_diff(orjson.loads(before), orjson.loads(after)))


def _is_stand_in(value: Any) -> bool:
    """Items on these paths are objects; a string can only be a stand-in."""
    return isinstance(value, str) or (isinstance(value, list)
                                      and any(isinstance(v, str) for v in value))


def make_patch(original: Obj, without_status: Obj, final: Obj) -> Patch:
    """``jsonpatch.make_patch(original, final)``, in two steps (sidecar, then status)
    and on skeletons of the touched paths. Injection only adds, and an added
    item is never a stand-in; anything else falls back to diffing whole pods."""
    originals = _stand_ins(original)
    ops = _cached_diff(skeleton(original, SIDECAR_PATHS, originals),
                       skeleton(without_status, SIDECAR_PATHS, originals))
    if any(op["op"] != "add" or _is_stand_in(op.get("value")) for op in ops):
        ops = _diff(original, without_status)
    return ops + _cached_diff(skeleton(without_status, STATUS_PATHS, {}),
                              skeleton(final, STATUS_PATHS, {}))


def encode(ops: Patch) -> str:
    """The base64 form an AdmissionResponse carries."""
    return base64.b64encode(orjson.dumps(ops)).decode()


def apply(obj: Obj, ops: Patch) -> Obj:
    """Apply a patch as the API server would (used by tests and the offline path)."""
    result: Obj = jsonpatch.apply_patch(obj, ops)
    return result
