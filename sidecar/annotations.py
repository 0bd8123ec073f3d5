"""The shard.io annotation schema: names, defaults and validators, in one place.

Both sides import this module (the whole-pod check and the sidecar container's
resources are in ``sidecar.pod_checks``; the annotations file format in
``sidecar.downward``): the webhook rejects a pod whose annotations do
not parse here, and the sidecar builds its routes from the very same parse.
So whatever the webhook admitted, the sidecar understands the same way.

Design rules:
- Every validator is pure and raises ``AnnotationError`` naming the annotation
  and the value: ``invalid value '<v>' for annotation '<k>': <why>``.
- Nothing is silently ignored. An unknown ``shard.io/`` annotation, or an
  option for a route that ``shard.io/backend`` does not declare, is an error,
  because a typo that quietly falls back to a default can misroute.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from sidecar.shardfn import STRATEGIES, Strategy

PREFIX: Final = "shard.io/"
INJECT: Final = "shard.io/inject"
STATUS: Final = "shard.io/status"
BACKEND: Final = "shard.io/backend"
KEY: Final = "shard.io/key"
STRATEGY: Final = "shard.io/strategy"
UNAVAILABLE: Final = "shard.io/unavailable"
TIMEOUT: Final = "shard.io/timeout"
CPU_REQUEST: Final = "shard.io/sidecar-cpu-request"
CPU_LIMIT: Final = "shard.io/sidecar-cpu-limit"
MEMORY_REQUEST: Final = "shard.io/sidecar-memory-request"
MEMORY_LIMIT: Final = "shard.io/sidecar-memory-limit"
#: Client connections the sidecar serves at once (pod-wide, no per-route form).
MAX_CONNECTIONS: Final = "shard.io/max-connections"
#: Where a route's map comes from: the directory service, or the sidecar's own watches.
DISCOVERY: Final = "shard.io/discovery"
#: Namespace label that takes a namespace out of the webhook's namespaceSelector.
ADMISSION_WEBHOOKS_LABEL: Final = "shard.io/admission-webhooks"

#: Options that take an optional ``.<route>`` suffix.
ROUTE_OPTIONS: Final = (KEY, STRATEGY, UNAVAILABLE, TIMEOUT, DISCOVERY)
RESOURCE_OPTIONS: Final = (CPU_REQUEST, CPU_LIMIT, MEMORY_REQUEST, MEMORY_LIMIT)
KNOWN: Final = frozenset((INJECT, STATUS, BACKEND, MAX_CONNECTIONS, *ROUTE_OPTIONS,
                          *RESOURCE_OPTIONS))

DEFAULT_KEY: Final = "header:X-Shard-Key"
DEFAULT_STRATEGY: Final[Strategy] = "modulo"
DEFAULT_UNAVAILABLE: Final = "fail"
DEFAULT_TIMEOUT: Final = "30s"
DEFAULT_RESOURCES: Final = {
    CPU_REQUEST: "50m",
    MEMORY_REQUEST: "64Mi",
    MEMORY_LIMIT: "128Mi",
}
MAX_WAIT_MS: Final = 60_000
#: About 10 KiB of RSS each when idle, more with bodies in flight: 1024 keeps the
#: sidecar far under the 128Mi memory limit it is injected with (README, Limits).
DEFAULT_MAX_CONNECTIONS: Final = 1024
MAX_MAX_CONNECTIONS: Final = 100_000
MAX_TIMEOUT_S: Final = 3600.0
DISCOVERY_MODES: Final = ("directory", "direct")

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m)")


#: How much of a user's value a message repeats (see ``clip``).
ECHO_CHARS: Final = 200


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` as a message may repeat it: at most ``limit`` characters, then a
    marker saying how many bytes (UTF-8) were cut.

    Annotation values are the user's and reach the webhook before the API
    server's size checks: a 1 MB value was echoed in full, twice, in the denial
    and again in the log line. Every message that repeats a value clips it.
    """
    if len(text) <= limit:
        return text
    cut = len(text[limit:].encode("utf-8", "surrogatepass"))
    return f"{text[:limit]}...[{cut} more bytes]"


class AnnotationError(ValueError):
    """An annotation value that cannot be used. The message is shown to the user.

    ``value`` is kept whole; the message repeats at most ``ECHO_CHARS`` of it, and
    of any piece of it that ``why`` quotes."""

    def __init__(self, key: str, value: str, why: str) -> None:
        super().__init__(f"invalid value '{clip(value)}' for annotation '{clip(key)}': "
                         f"{clip(why, 2 * ECHO_CHARS)}")
        self.key, self.value, self.why = key, value, why


KeyKind = Literal["header", "query", "path", "json"]


@dataclass(frozen=True)
class KeySource:
    """Where a request's shard key comes from."""

    kind: KeyKind
    #: Header name (as written), query parameter name, or the dotted JSON path.
    name: str = ""
    #: For ``path``: the index of the segment after the route (0 is the first).
    index: int = 0
    #: For ``json``: the path split on dots.
    path: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.kind}:{self.index if self.kind == 'path' else self.name}"


@dataclass(frozen=True)
class Backend:
    """One entry of ``shard.io/backend``: ``[route=]statefulset[.namespace][:port]``."""

    route: str
    statefulset: str
    namespace: str
    #: None means "the first container port of the StatefulSet's pod template".
    port: int | None


@dataclass(frozen=True)
class RouteSpec:
    """Everything the sidecar needs to serve ``localhost:15001/<name>/...``."""

    backend: Backend
    key: KeySource
    strategy: Strategy
    #: 0 means fail at once with 503; otherwise hold the request up to this long.
    wait_ms: int
    timeout_s: float

    @property
    def name(self) -> str:
        return self.backend.route


# --- single-value validators ------------------------------------------------


def parse_bool(key: str, value: str) -> bool:
    """``"true"`` or ``"false"``, exactly (as Kubernetes writes booleans)."""
    if value == "true":
        return True
    if value == "false":
        return False
    raise AnnotationError(key, value, "expected \"true\" or \"false\"")


def parse_key_source(key: str, value: str) -> KeySource:
    kind, sep, arg = value.partition(":")
    if not sep or not arg:
        raise AnnotationError(
            key, value, "expected header:<Name>, query:<name>, path:<index> or json:<dotted.path>"
        )
    if kind == "header":
        if _HTTP_TOKEN.fullmatch(arg) is None:
            raise AnnotationError(key, value, f"'{clip(arg)}' is not a valid HTTP header name")
        return KeySource("header", name=arg)
    if kind == "query":
        return KeySource("query", name=arg)
    if kind == "path":
        if not arg.isascii() or not arg.isdigit():
            raise AnnotationError(key, value,
                                  f"path index '{clip(arg)}' is not a non-negative integer")
        if len(arg) > 4:  # also keeps int() clear of CPython's 4300-digit limit
            raise AnnotationError(key, value, f"path index '{clip(arg)}' is over 9999")
        return KeySource("path", index=int(arg))
    if kind == "json":
        parts = tuple(arg.split("."))
        if any(not p for p in parts):
            raise AnnotationError(key, value, f"JSON path '{clip(arg)}' has an empty segment")
        return KeySource("json", name=arg, path=parts)
    raise AnnotationError(
        key, value, f"unknown key source '{clip(kind)}': expected header, query, path or json"
    )


def parse_strategy(key: str, value: str) -> Strategy:
    for strategy in STRATEGIES:
        if value == strategy:
            return strategy
    raise AnnotationError(key, value, f"expected one of {', '.join(STRATEGIES)}")


def parse_unavailable(key: str, value: str) -> int:
    """``fail`` gives 0; ``wait:<ms>`` gives the wait in milliseconds."""
    if value == "fail":
        return 0
    mode, sep, arg = value.partition(":")
    if mode != "wait" or not sep:
        raise AnnotationError(key, value, "expected 'fail' or 'wait:<ms>'")
    # The length first: int() refuses over 4300 digits with a ValueError of its own.
    if not arg.isascii() or not arg.isdigit() or len(arg) > 9 or \
            not 1 <= int(arg) <= MAX_WAIT_MS:
        raise AnnotationError(key, value, f"wait must be an integer from 1 to {MAX_WAIT_MS} ms")
    return int(arg)


def parse_duration(key: str, value: str) -> float:
    """A positive duration such as ``500ms``, ``30s`` or ``2m``, in seconds."""
    match = _DURATION.fullmatch(value)
    if match is None:
        raise AnnotationError(key, value, "expected a duration such as 500ms, 30s or 2m")
    number, unit = float(match[1]), match[2]
    seconds = number / 1000 if unit == "ms" else number * 60 if unit == "m" else number
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise AnnotationError(key, value, f"must be more than 0 and at most {MAX_TIMEOUT_S:.0f}s")
    return seconds


def parse_max_connections(key: str, value: str) -> int:
    """An integer from 1 to ``MAX_MAX_CONNECTIONS``."""
    # The length first: int() refuses over 4300 digits with a ValueError of its own.
    if not value.isascii() or not value.isdigit() or len(value) > 6 or \
            not 1 <= int(value) <= MAX_MAX_CONNECTIONS:
        raise AnnotationError(key, value, f"expected an integer from 1 to {MAX_MAX_CONNECTIONS}")
    return int(value)


def parse_discovery(key: str, value: str) -> str:
    """``directory`` or ``direct``."""
    if value not in DISCOVERY_MODES:
        raise AnnotationError(key, value, f"expected one of {', '.join(DISCOVERY_MODES)}")
    return value


def discovery_for(annotations: Mapping[str, str], route: str) -> str | None:
    """``shard.io/discovery.<route>``, else ``shard.io/discovery``, validated; None when
    neither is set (the sidecar's default then applies: the directory if it has one)."""
    key, value = _option(annotations, DISCOVERY, route, "")
    return None if key not in annotations else parse_discovery(key, value)


def max_connections(annotations: Mapping[str, str]) -> int | None:
    """``shard.io/max-connections`` if the pod sets it, validated."""
    value = annotations.get(MAX_CONNECTIONS)
    return None if value is None else parse_max_connections(MAX_CONNECTIONS, value)


def parse_backends(value: str, pod_namespace: str) -> tuple[Backend, ...]:
    """``[route=]statefulset[.namespace][:port]``, comma-separated, routes unique."""
    backends: list[Backend] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            raise AnnotationError(BACKEND, value, "empty entry in the comma-separated list")
        backend = _parse_backend(entry, value, pod_namespace)
        if any(b.route == backend.route for b in backends):
            raise AnnotationError(BACKEND, value, f"route '{backend.route}' is declared twice")
        backends.append(backend)
    return tuple(backends)


def _parse_backend(entry: str, whole: str, pod_namespace: str) -> Backend:
    route, sep, target = entry.rpartition("=")
    if sep and not route:
        raise AnnotationError(BACKEND, whole, f"entry '{clip(entry)}' has an empty route name")
    target, sep, port_text = target.partition(":")
    port: int | None = None
    if sep:
        if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 or \
                not 1 <= int(port_text) <= 65535:
            raise AnnotationError(BACKEND, whole, f"port '{clip(port_text)}' is not in 1..65535")
        port = int(port_text)
    statefulset, _, namespace = target.partition(".")
    namespace = namespace or pod_namespace
    for what, name in (("statefulset", statefulset), ("namespace", namespace)):
        if _DNS_LABEL.fullmatch(name) is None:
            raise AnnotationError(BACKEND, whole,
                                  f"{what} '{clip(name)}' is not a valid DNS-1123 label")
    route = route or statefulset
    if _DNS_LABEL.fullmatch(route) is None:
        raise AnnotationError(BACKEND, whole,
                              f"route '{clip(route)}' is not a valid DNS-1123 label")
    return Backend(route=route, statefulset=statefulset, namespace=namespace, port=port)


# --- whole-pod parsing ------------------------------------------------------


def _option(
    annotations: Mapping[str, str], option: str, route: str, default: str
) -> tuple[str, str]:
    """The per-route value if set, else the global one, else the default: (key, value)."""
    specific = f"{option}.{route}"
    if specific in annotations:
        return specific, annotations[specific]
    return option, annotations.get(option, default)


def parse_routes(annotations: Mapping[str, str], pod_namespace: str) -> tuple[RouteSpec, ...]:
    """Every route the pod declares, fully validated. No ``shard.io/backend`` means none."""
    check_known(annotations)
    backends = parse_backends(annotations[BACKEND], pod_namespace) if BACKEND in annotations else ()
    routes = {b.route for b in backends}
    for name, value in annotations.items():
        if not name.startswith(PREFIX):
            continue  # another tool's annotation, e.g. example.io/timeout.db
        base, dot, route = name.removeprefix(PREFIX).partition(".")
        if dot and f"{PREFIX}{base}" in ROUTE_OPTIONS and route not in routes:
            declared = clip(", ".join(sorted(routes))) or "none"
            raise AnnotationError(
                name, value, f"no route '{clip(route)}' in {BACKEND} (declared: {declared})"
            )
    return tuple(_route_spec(annotations, b) for b in backends)


def _route_spec(annotations: Mapping[str, str], backend: Backend) -> RouteSpec:
    route = backend.route
    return RouteSpec(
        backend=backend,
        key=parse_key_source(*_option(annotations, KEY, route, DEFAULT_KEY)),
        strategy=parse_strategy(*_option(annotations, STRATEGY, route, DEFAULT_STRATEGY)),
        wait_ms=parse_unavailable(*_option(annotations, UNAVAILABLE, route, DEFAULT_UNAVAILABLE)),
        timeout_s=parse_duration(*_option(annotations, TIMEOUT, route, DEFAULT_TIMEOUT)),
    )


def check_known(annotations: Mapping[str, str]) -> None:
    """Reject ``shard.io/`` annotations this schema does not define (typos misroute)."""
    for name, value in annotations.items():
        if not name.startswith(PREFIX) or name in KNOWN:
            continue
        base = name.split(".io/", 1)[1].split(".", 1)[0]
        if f"{PREFIX}{base}" not in ROUTE_OPTIONS:
            raise AnnotationError(name, value, "unknown shard.io annotation")
