"""The routing decision for one request, as a pure function of its head and the map.

Design rules:
- ``route`` (HTTP/2) and ``route_h1`` (HTTP/1.1) read only what they are given
  (the target, the headers, the routes) and return a value: ``Routed``,
  ``NeedBody`` (a ``json:`` key: the caller reads the body, then calls
  ``route_body``), ``Refusal``, or on HTTP/1.1 ``Introspect`` (``/_shard/...``).
  No sockets, no clock, no pools: the front ends (``h2bridge``, ``exchange``) do
  the I/O, and re-resolve a waited-for key with ``owner``.
- HTTP/2: the route is the first path segment when it names one (then it is
  stripped from the upstream path, as on HTTP/1.1); otherwise the
  ``x-shard-route`` header; otherwise, with exactly one route, that route (SPEC
  §8), so a stock gRPC client whose paths are ``/pkg.Service/Method`` works
  unchanged. HTTP/1.1: the first segment only (SPEC §2); the same head pass
  checks its Host (RFC 9112 §3.2) before anything else is refused.
- Keys come from ``sidecar.keys`` and owners from ``shardmap.resolve`` (slot mode:
  ``slot_state.resolve_slot``), for both protocols: one key, one owner, never
  rerouted. Slot mode is routed only where the front end fences and replays on a
  421 (``fenced``: HTTP/1.1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mypy_extensions import mypyc_attr

from sidecar import keys
from sidecar.errors import ProxyError, quote
from sidecar.http11 import check_host, scan_head, split_target
from sidecar.shardmap import RouteState, Shard, resolve
from sidecar.slot_state import resolve_slot

#: The header naming the route when the path does not (lower case, as HTTP/2 sends it).
ROUTE_HEADER = b"x-shard-route"
#: Error codes that ``shard.io/unavailable: wait:<ms>`` waits out instead of answering.
WAITABLE = frozenset({"shard_unavailable", "shard_map_not_ready"})

#: All values of a (lower-case) header name, in order; empty when absent.
HeaderLookup = Callable[[bytes], Sequence[bytes]]


# The decisions are plain classes, not frozen dataclasses: compiled, one is made per
# request, and a frozen dataclass's construction cost more than the rest of routing.
# Nothing changes them once made.


@mypyc_attr(free_list_len=1)  # compiled: the next request's decision reuses the memory
class Routed:
    """Send to ``ordinal`` (``shard``'s pod) of ``state``, at ``upstream_path``. In slot
    mode ``slot`` is the key's slot (else -1) and ``fence`` the HTTP/1.1 upstream header
    lines naming the slot, map and ordinal (HTTP/2 builds its own from ``slot``)."""

    def __init__(self, state: RouteState, ordinal: int, shard: Shard, upstream_path: bytes,
                 key: str, fence: bytes = b"", slot: int = -1) -> None:
        self.state, self.ordinal, self.shard = state, ordinal, shard
        self.upstream_path, self.key, self.fence, self.slot = upstream_path, key, fence, slot


class NeedBody:
    """The key is in the body (``json:``): read it (up to the JSON limit), then
    ``route_body``; ``fenced``: the front end fences slot mode (``owner``'s)."""

    def __init__(self, state: RouteState, upstream_path: bytes, fenced: bool = False) -> None:
        self.state, self.upstream_path, self.fenced = state, upstream_path, fenced


class Introspect:
    """HTTP/1.1 ``/_shard/<rest>?<query>``: answered by the sidecar (``sidecar.introspect``)."""

    def __init__(self, rest: bytes, query: bytes) -> None:
        self.rest, self.query = rest, query


class Refusal:
    """Answer the request with ``error``. ``state`` and ``key`` are set when the route and
    key were found but the owner is not ready: ``wait:<ms>`` re-resolves that same key,
    then sends it to ``upstream_path``. ``state`` alone: the route was found, the key
    was not (HTTP/1.1 counts the refusal against the route)."""

    def __init__(self, error: ProxyError, state: RouteState | None = None,
                 key: str | None = None, upstream_path: bytes = b"") -> None:
        self.error, self.state, self.key, self.upstream_path = error, state, key, upstream_path

    @property
    def code(self) -> str:
        return self.error.code

    @property
    def message(self) -> str:
        return self.error.message


Decision = Routed | NeedBody | Refusal


def _known(routes: dict[bytes, RouteState]) -> str:
    return ", ".join(sorted(r.decode("latin-1") for r in routes)) or "none"


def pick_route(path: bytes, header: HeaderLookup, routes: dict[bytes, RouteState]
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
          routes: dict[bytes, RouteState], *, grpc: bool = False) -> Decision:
    """Where a request goes, from its method, ``:path`` and headers (SPEC §2, §8).

    ``grpc``: a ``json:`` key cannot be read from a gRPC message (a length-prefixed
    protobuf), so it is refused instead of asking for the body.
    """
    picked = pick_route(path, header, routes)
    if isinstance(picked, ProxyError):
        return Refusal(picked)
    state, upstream_path, rest, query = picked
    source = state.key
    first: bytes | None = None
    other: bytes | None = None
    if state.key_kind == "header":
        values = header(state.key_header)
        first = values[0] if values else None
        for value in values[1:]:
            if value != first:
                other = value
                break
    elif state.key_kind == "json":
        if grpc:
            return Refusal(ProxyError(
                "invalid_shard_key", f"route '{state.name}' takes its key from {source}, which "
                "a gRPC request cannot carry (its body is a protobuf message): use a header: "
                "key for gRPC", source=str(source), route=state.name))
        return NeedBody(state, upstream_path, True)
    try:
        key = read_key(state, first, other, rest, query)
    except ProxyError as err:
        return Refusal(err)
    return owner(state, key, upstream_path, True)


def route_h1(target: bytes, head: list[bytes], routes: dict[bytes, RouteState],
             http10: bool) -> Decision | Introspect:
    """Where an HTTP/1.1 request goes (SPEC §2), from its target and its head as
    ``http11.scan_head`` reads it: ``[request line, name, b": ", value, CRLF, ...]``.

    The target is ``/<route>/<path>`` (or absolute-form, whose authority is dropped);
    a bad target is refused first, then a bad Host, then an unknown route or key.
    Slot mode is routed (the HTTP/1.1 front end fences and replays).
    """
    parts = split_target(target)
    if parts is None:
        return Refusal(ProxyError("bad_request", f"request target "
                                  f"'{target.decode('latin-1')}' is not /<route>/<path>"))
    name, upstream_path, rest, query = parts
    state = routes.get(name)
    kind = state.key_kind if state is not None else ""
    # Host and the key header in one pass, checked before anything goes upstream.
    if kind == "header":
        assert state is not None
        hosts, host, value, other = scan_head(head, state.key_header, state.key_spelling)
    else:
        hosts, host, value, other = scan_head(head, b"", b"")
    if hosts != 1 or 0x2C in host:  # check_host's common case inline: one Host, no list
        error = check_host(hosts, host, http10)
        if error is not None:
            return Refusal(error)
    if state is None:
        if name == b"_shard":
            return Introspect(rest, query)
        route = name.decode("latin-1")
        known = ", ".join(sorted(r.decode() for r in routes)) or "none"
        return Refusal(ProxyError("unknown_route", f"no route '{route}' (known: {known})",
                                  route=route))
    if kind == "json":
        return NeedBody(state, upstream_path, True)
    try:
        key = read_key(state, value, other, rest, query)
    except ProxyError as err:
        return Refusal(err, state)
    return owner(state, key, upstream_path, True)


def read_key(state: RouteState, first: bytes | None, other: bytes | None, rest: bytes,
             query: bytes) -> str:
    """The key of a request on ``state`` whose key is not ``json:``, from the key header's
    first value and another, different one (both front ends find them their way), or
    the path after the route and the query. Raises the ``ProxyError`` to answer."""
    source = state.key
    kind = state.key_kind
    if kind == "header":
        if other is not None:
            raise keys.ambiguous(source, first, other)
        return keys.from_header(first, source)
    if kind == "query":
        return keys.from_query(query, source)
    return keys.from_path(rest, source)


def route_body(need: NeedBody, body: bytes) -> Decision:
    """The decision for a ``json:`` key once the body is read."""
    try:
        key = keys.from_json(body, need.state.spec.key)
    except ProxyError as err:
        return Refusal(err)
    return owner(need.state, key, need.upstream_path, need.fenced)


def owner(state: RouteState, key: str, upstream_path: bytes, fenced: bool = False) -> Decision:
    """``key``'s owner in ``state``; a Refusal that keeps the key when it is not ready.
    ``fenced``: the caller sends slot mode's fencing lines and replays on a 421."""
    if state.slotted:
        if fenced:
            try:
                shard, slot, fence = resolve_slot(state, key)
            except ProxyError as err:
                return Refusal(err, state, key, upstream_path)
            return Routed(state, shard.ordinal, shard, upstream_path, key, fence, slot)
        # Only a front end that fences and replays a 421 may send in slot mode (SPEC §6):
        # both do, but HTTP/1.1's default-mode wait does not, when the route switched to
        # slot mode meanwhile. Final (no key kept): answered at once, to be sent again.
        return Refusal(ProxyError("shard_unavailable", f"route '{state.name}' switched to "
                                  "slot mode while the request waited for its shard; send "
                                  "it again", route=state.name))
    try:
        ordinal, shard = resolve(state, key)
    except ProxyError as err:
        return Refusal(err, state, key, upstream_path)
    return Routed(state, ordinal, shard, upstream_path, key)


def headers_lookup(headers: Sequence[tuple[bytes, bytes]]) -> HeaderLookup:
    """A ``HeaderLookup`` over a header list (HTTP/2 names are lower case)."""
    def lookup(name: bytes) -> Sequence[bytes]:
        return [value for n, value in headers if n == name]
    return lookup
