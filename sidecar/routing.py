"""The routing decision for one request, as a pure function of its head and the map.

Design rules:
- ``route`` reads only what it is given (method, path, a header lookup, the
  routes) and returns a value: ``Routed``, ``NeedBody`` (a ``json:`` key: the
  caller reads the body, then calls ``route_body``) or ``Refusal``. No sockets,
  no clock, no pools: the front ends (HTTP/2 here; HTTP/1.1 once it adopts it)
  do the I/O.
- The route is the first path segment when it names one (then it is stripped
  from the upstream path, as on HTTP/1.1); otherwise the ``x-shard-route``
  header; otherwise, with exactly one route, that route (SPEC §8), so a stock
  gRPC client whose paths are ``/pkg.Service/Method`` works unchanged.
- Keys come from ``sidecar.keys`` and owners from ``shardmap.resolve``, the same
  functions HTTP/1.1 uses: one key, one owner, never rerouted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sidecar import keys
from sidecar.errors import ProxyError, quote
from sidecar.http11 import split_target
from sidecar.shardmap import RouteState, Shard, resolve
from sidecar.slot_state import resolve_slot

#: The header naming the route when the path does not (lower case, as HTTP/2 sends it).
ROUTE_HEADER = b"x-shard-route"
#: Error codes that ``shard.io/unavailable: wait:<ms>`` waits out instead of answering.
WAITABLE = frozenset({"shard_unavailable", "shard_map_not_ready"})

#: All values of a (lower-case) header name, in order; empty when absent.
HeaderLookup = Callable[[bytes], Sequence[bytes]]


@dataclass(frozen=True)
class Routed:
    """Send to ``ordinal`` (``shard``'s pod) of ``state``, at ``upstream_path``. In slot
    mode ``slot`` is the key's slot (fenced with ``state.slotmap``); else -1."""

    state: RouteState
    ordinal: int
    shard: Shard
    upstream_path: bytes
    key: str
    slot: int = -1


@dataclass(frozen=True)
class NeedBody:
    """The key is in the body (``json:``): read it (up to the JSON limit), then ``route_body``."""

    state: RouteState
    upstream_path: bytes


@dataclass(frozen=True)
class Refusal:
    """Answer the request with ``error``. ``state`` and ``key`` are set when the route and
    key were found but the owner is not ready: ``wait:<ms>`` re-resolves that same key."""

    error: ProxyError
    state: RouteState | None = None
    key: str | None = None

    @property
    def code(self) -> str:
        return self.error.code

    @property
    def message(self) -> str:
        return self.error.message


Decision = Routed | NeedBody | Refusal


def _known(routes: Mapping[bytes, RouteState]) -> str:
    return ", ".join(sorted(r.decode("latin-1") for r in routes)) or "none"


def pick_route(path: bytes, header: HeaderLookup, routes: Mapping[bytes, RouteState]
               ) -> tuple[RouteState, bytes, bytes, bytes] | ProxyError:
    """(route state, upstream path, path after the route, query) or why there is none."""
    parts = split_target(path) if path.startswith(b"/") else None
    if parts is None:
        return ProxyError("bad_request", f"request path '{quote(path)}' does not start with '/'")
    name, target, rest, query = parts
    state = routes.get(name)
    if state is not None:
        return state, target, rest, query
    mark = path.find(b"?")
    whole, query = (path, b"") if mark < 0 else (path[:mark], path[mark + 1:])
    named = header(ROUTE_HEADER)
    if named:
        if len(set(named)) > 1:
            return ProxyError("bad_request", f"x-shard-route has two different values, "
                              f"'{quote(named[0])}' and '{quote(named[1])}'")
        state = routes.get(named[0].strip())
        if state is None:
            route = named[0].decode("latin-1")
            return ProxyError("unknown_route", f"no route '{quote(route)}' named by x-shard-route "
                              f"(known: {_known(routes)})", route=route)
        return state, path, whole, query
    if len(routes) == 1:
        return next(iter(routes.values())), path, whole, query
    route = name.decode("latin-1")
    return ProxyError("unknown_route", f"no route '{quote(route)}' (known: {_known(routes)}); "
                      "name one with the x-shard-route header", route=route)


def route(method: bytes, path: bytes, header: HeaderLookup,
          routes: Mapping[bytes, RouteState], *, grpc: bool = False) -> Decision:
    """Where a request goes, from its method, ``:path`` and headers (SPEC §2, §8).

    ``grpc``: a ``json:`` key cannot be read from a gRPC message (a length-prefixed
    protobuf), so it is refused instead of asking for the body.
    """
    picked = pick_route(path, header, routes)
    if isinstance(picked, ProxyError):
        return Refusal(picked)
    state, upstream_path, rest, query = picked
    source = state.key
    kind = state.key_kind
    try:
        if kind == "header":
            values = header(state.key_header)
            first = values[0] if values else None
            for other in values[1:]:
                if other != first:
                    raise keys.ambiguous(source, first, other)
            key = keys.from_header(first, source)
        elif kind == "json":
            if grpc:
                raise ProxyError("invalid_shard_key", f"route '{state.name}' takes its key from "
                                 f"{source}, which a gRPC request cannot carry (its body is a "
                                 "protobuf message): use a header: key for gRPC",
                                 source=str(source), route=state.name)
            return NeedBody(state, upstream_path)
        elif kind == "query":
            key = keys.from_query(query, source)
        else:
            key = keys.from_path(rest, source)
    except ProxyError as err:
        return Refusal(err)
    return owner(state, key, upstream_path)


def route_body(need: NeedBody, body: bytes) -> Decision:
    """The decision for a ``json:`` key once the body is read."""
    try:
        key = keys.from_json(body, need.state.spec.key)
    except ProxyError as err:
        return Refusal(err)
    return owner(need.state, key, need.upstream_path)


def owner(state: RouteState, key: str, upstream_path: bytes) -> Decision:
    """``key``'s owner in ``state``; a Refusal that keeps the key when it is not ready."""
    if state.slotted:
        # Slot mode (SPEC §6): the slot's owner in the newest map, as HTTP/1.1 resolves it.
        try:
            shard, slot, _ = resolve_slot(state, key)
        except ProxyError as err:
            return Refusal(err, state, key)
        return Routed(state, shard.ordinal, shard, upstream_path, key, slot)
    try:
        ordinal, shard = resolve(state, key)
    except ProxyError as err:
        return Refusal(err, state, key)
    return Routed(state, ordinal, shard, upstream_path, key)


def headers_lookup(headers: Sequence[tuple[bytes, bytes]]) -> HeaderLookup:
    """A ``HeaderLookup`` over a header list (HTTP/2 names are lower case)."""
    def lookup(name: bytes) -> Sequence[bytes]:
        return [value for n, value in headers if n == name]
    return lookup
