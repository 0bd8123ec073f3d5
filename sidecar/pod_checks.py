"""The webhook's whole-pod check, and the sidecar container's resource annotations.

Apart from ``sidecar.annotations`` (the per-annotation schema the sidecar also
parses) because only the webhook needs these: resources shape the container it
renders, and ``validate_pod`` is what it runs before injecting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final

from sidecar.annotations import (
    CPU_LIMIT,
    CPU_REQUEST,
    DEFAULT_RESOURCES,
    DISCOVERY,
    KEY,
    MEMORY_LIMIT,
    MEMORY_REQUEST,
    RESOURCE_OPTIONS,
    STRATEGY,
    TIMEOUT,
    UNAVAILABLE,
    AnnotationError,
    RouteSpec,
    clip,
    discovery_for,
    max_connections,
    parse_discovery,
    parse_duration,
    parse_key_source,
    parse_routes,
    parse_strategy,
    parse_unavailable,
)

_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
_SUFFIX_SCALE: Final = {
    None: Decimal(1), "m": Decimal("0.001"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}


def parse_quantity(key: str, value: str) -> Decimal:
    """A Kubernetes resource quantity (``100m``, ``64Mi``), as a number of base units."""
    match = _QUANTITY.fullmatch(value)
    if match is None:
        raise AnnotationError(key, value, "not a Kubernetes quantity such as 100m or 64Mi")
    try:
        amount = Decimal(match[1]) * _SUFFIX_SCALE[match[2]]
    except InvalidOperation:
        raise AnnotationError(key, value, "not a Kubernetes quantity") from None
    if amount <= 0:
        raise AnnotationError(key, value, "must be greater than zero")
    return amount


@dataclass(frozen=True)
class Resources:
    """The sidecar container's resources after annotation overrides."""

    requests: dict[str, str]
    limits: dict[str, str]


def parse_resources(annotations: Mapping[str, str]) -> Resources:
    """Defaults, overridden by validated annotations; a request may not exceed its limit."""
    values = {k: annotations.get(k, DEFAULT_RESOURCES.get(k, "")) for k in RESOURCE_OPTIONS}
    amounts = {k: parse_quantity(k, v) for k, v in values.items() if v}
    for request, limit in ((CPU_REQUEST, CPU_LIMIT), (MEMORY_REQUEST, MEMORY_LIMIT)):
        if request in amounts and limit in amounts and amounts[request] > amounts[limit]:
            key = request if request in annotations else limit
            raise AnnotationError(
                key, values[key],
                f"{request} ({clip(values[request])}) exceeds {limit} ({clip(values[limit])})",
            )
    pick: Callable[[str, str], dict[str, str]] = lambda cpu, mem: {  # noqa: E731
        name: values[k] for name, k in (("cpu", cpu), ("memory", mem)) if values[k]
    }
    return Resources(
        requests=pick(CPU_REQUEST, MEMORY_REQUEST), limits=pick(CPU_LIMIT, MEMORY_LIMIT)
    )


#: The global (un-suffixed) route options and their validators.
_OPTION_PARSERS: Final[tuple[tuple[str, Callable[[str, str], object]], ...]] = (
    (KEY, parse_key_source),
    (STRATEGY, parse_strategy),
    (UNAVAILABLE, parse_unavailable),
    (TIMEOUT, parse_duration),
    (DISCOVERY, parse_discovery),
)


def validate_pod(annotations: Mapping[str, str], pod_namespace: str) -> tuple[RouteSpec, ...]:
    """Everything the webhook checks before injecting; returns the parsed routes.

    Global options are checked on their own as well: routes only parse the ones
    they use, and with no ``shard.io/backend`` yet a bad global would slip through
    and bite when a later edit adds a backend.
    """
    routes = parse_routes(annotations, pod_namespace)
    for option, parse in _OPTION_PARSERS:
        if option in annotations:
            parse(option, annotations[option])
    for route in routes:  # not part of RouteSpec: the sidecar reads it per route itself
        discovery_for(annotations, route.name)
    parse_resources(annotations)
    max_connections(annotations)
    return routes
