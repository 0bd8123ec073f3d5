"""The kubelet's downward-API annotations file: how the sidecar reads its pod's annotations.

The webhook mounts ``metadata.annotations`` as a file; the kubelet rewrites it
when they change, which is how routes reload without a restart (``sidecar.reload``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping


def parse_downward_file(text: str) -> dict[str, str]:
    """Parse the kubelet's ``metadata.annotations`` file: ``key="value"`` per line.

    The kubelet writes values with Go's ``%q``; JSON string syntax covers what
    annotation values contain in practice, and ``\\x``/``\\a``/``\\v`` are mapped
    to their JSON equivalents first.
    """
    result: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, quoted = line.partition("=")
        if not sep or not quoted.startswith('"'):
            raise ValueError(
                f"line {number} of the annotations file is not key=\"value\": {line!r}"
            )
        result[key] = _unquote_go(quoted, number)
    return result


_GO_ESCAPES = re.compile(r"\\(x[0-9a-fA-F]{2}|a|v|U[0-9a-fA-F]{8}|\\)")


def _unquote_go(quoted: str, number: int) -> str:
    def to_json(match: re.Match[str]) -> str:
        esc = match[1]
        if esc == "\\":
            return "\\\\"
        if esc in ("a", "v"):
            return "\\u%04x" % (7 if esc == "a" else 11)
        code = int(esc[1:], 16)
        if code > 0x10FFFF:  # chr() would raise a ValueError that names no line
            raise ValueError(f"line {number} of the annotations file: bad escape \\{esc}")
        return json.dumps(chr(code))[1:-1]

    try:
        value = json.loads(_GO_ESCAPES.sub(to_json, quoted))
    except json.JSONDecodeError as err:
        raise ValueError(f"line {number} of the annotations file: bad quoting: {err}") from None
    if not isinstance(value, str):
        raise ValueError(f"line {number} of the annotations file is not a quoted string")
    return value


def format_downward_file(annotations: Mapping[str, str]) -> str:
    """The inverse of ``parse_downward_file``, in the kubelet's sorted order."""
    return "".join(
        f"{k}={json.dumps(v, ensure_ascii=False)}\n" for k, v in sorted(annotations.items())
    )
