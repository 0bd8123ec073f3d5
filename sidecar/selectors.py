"""A StatefulSet's ``spec.selector`` as a label selector query string. Pure.

The sidecar's direct watch and the directory's informer watch only the
StatefulSet's own pods: the API server filters by this selector, so a busy
namespace costs them nothing. (Here, not in ``directory``, because the sidecar
must not depend on the directory package.)
"""

from __future__ import annotations

from typing import Any

_OPERATORS = {"In": "in", "NotIn": "notin"}


def label_selector(selector: dict[str, Any] | None) -> str:
    """``matchLabels`` and ``matchExpressions`` in the API's query syntax; raises
    ValueError naming the expression it cannot express."""
    selector = selector or {}
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op = expr.get("key"), expr.get("operator")
        values = expr.get("values") or []
        if op in _OPERATORS:
            parts.append(f"{key} {_OPERATORS[op]} ({','.join(sorted(values))})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise ValueError(f"selector expression on '{key}' has unknown operator {op!r}")
    if not parts:
        # An empty selector would select every pod; the API refuses such a StatefulSet.
        raise ValueError("the StatefulSet's spec.selector is empty")
    return ",".join(parts)
