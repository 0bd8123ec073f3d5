"""The JSON patch (RFC 6902) that turns the pod the API server sent into the injected one.

The patch is the diff of two plain dicts, so it only adds what injection added
and never rewrites fields that another webhook or the user set. It is made in
two steps so that the ``shard.io/status`` annotation is always the last
operation: a reader of the patch (or of an audit log) sees the status only
after everything it describes.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonpatch

from webhook.podview import Obj

Patch = list[dict[str, Any]]


def make_patch(original: Obj, without_status: Obj, final: Obj) -> Patch:
    ops: Patch = jsonpatch.make_patch(original, without_status).patch
    ops += jsonpatch.make_patch(without_status, final).patch
    return ops


def encode(ops: Patch) -> str:
    """The base64 form an AdmissionResponse carries."""
    return base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode()


def apply(obj: Obj, ops: Patch) -> Obj:
    """Apply a patch as the API server would (used by tests and the offline path)."""
    result: Obj = jsonpatch.apply_patch(obj, ops)
    return result
