"""sidecar.routing.route: the pure routing decision of an HTTP/2 request (SPEC §2, §8)."""

from __future__ import annotations

import pytest

from sidecar.annotations import KEY, Backend, RouteSpec, parse_key_source
from sidecar.routing import NeedBody, Refusal, Routed, headers_lookup, route, route_body
from sidecar.shardfn import ordinal_for
from sidecar.shardmap import RouteState, Shard


def state(name: str, key: str = "header:X-Shard-Key", count: int = 3, wait_ms: int = 0,
          ready: bool = True) -> RouteState:
    spec = RouteSpec(backend=Backend(route=name, statefulset=name, namespace="ns", port=80),
                     key=parse_key_source(KEY, key), strategy="modulo", wait_ms=wait_ms,
                     timeout_s=5.0)
    shards = tuple(Shard(ordinal=i, ready=ready, address=(f"10.0.0.{i}", 80), pod=f"{name}-{i}")
                   for i in range(count))
    return RouteState(spec=spec, synced=True, count=count, shards=shards)


def routes(*states: RouteState) -> dict[bytes, RouteState]:
    return {s.name.encode(): s for s in states}


def decide(path: bytes, headers: list[tuple[bytes, bytes]], table: dict[bytes, RouteState],
           grpc: bool = False) -> Routed | NeedBody | Refusal:
    return route(b"POST", path, headers_lookup(headers), table, grpc=grpc)


KEY7 = [(b"x-shard-key", b"7")]


def test_first_segment_names_the_route_and_is_stripped() -> None:
    got = decide(b"/b/pkg.Svc/M?x=1", KEY7, routes(state("a"), state("b")))
    assert isinstance(got, Routed)
    assert got.state.name == "b" and got.upstream_path == b"/pkg.Svc/M?x=1"
    assert got.ordinal == ordinal_for("7", "modulo", 3) and got.key == "7"


def test_x_shard_route_header_then_the_only_route() -> None:
    both = routes(state("a"), state("b"))
    got = decide(b"/pkg.Svc/M", [*KEY7, (b"x-shard-route", b"a")], both)
    assert isinstance(got, Routed) and got.state.name == "a"
    assert got.upstream_path == b"/pkg.Svc/M"  # not a route segment: kept whole
    got = decide(b"/pkg.Svc/M", KEY7, routes(state("only")))
    assert isinstance(got, Routed) and got.state.name == "only"
    got = decide(b"/pkg.Svc/M", KEY7, both)
    assert isinstance(got, Refusal) and got.code == "unknown_route"
    assert "known: a, b" in got.message and "x-shard-route" in got.message
    got = decide(b"/pkg.Svc/M", [*KEY7, (b"x-shard-route", b"zz")], both)
    assert isinstance(got, Refusal) and got.code == "unknown_route" and "'zz'" in got.message


@pytest.mark.parametrize(("headers", "code"), [
    ([], "missing_shard_key"),
    ([(b"x-shard-key", b"1"), (b"x-shard-key", b"2")], "ambiguous_shard_key"),
    ([(b"x-shard-key", b"1, 2")], "ambiguous_shard_key"),
    ([(b"x-shard-key", b"\xff")], "invalid_shard_key"),
])
def test_bad_keys_are_refused(headers: list[tuple[bytes, bytes]], code: str) -> None:
    got = decide(b"/svc/x", headers, routes(state("svc")))
    assert isinstance(got, Refusal) and got.code == code and got.key is None


def test_identical_repeated_key_is_one_key() -> None:
    got = decide(b"/svc/x", [(b"x-shard-key", b"4"), (b"x-shard-key", b"4")],
                 routes(state("svc")))
    assert isinstance(got, Routed) and got.key == "4"


def test_query_and_path_keys() -> None:
    got = decide(b"/svc/x?id=9", [], routes(state("svc", key="query:id")))
    assert isinstance(got, Routed) and got.key == "9"
    got = decide(b"/svc/users/42/orders", [], routes(state("svc", key="path:1")))
    assert isinstance(got, Routed) and got.key == "42"


def test_json_key_needs_the_body_or_is_refused_for_grpc() -> None:
    table = routes(state("svc", key="json:user.id"))
    need = decide(b"/svc/x", [], table)
    assert isinstance(need, NeedBody)
    got = route_body(need, b'{"user": {"id": 12}}')
    assert isinstance(got, Routed) and got.key == "12" and got.upstream_path == b"/x"
    got = decide(b"/svc/x", [], table, grpc=True)
    assert isinstance(got, Refusal) and got.code == "invalid_shard_key"
    assert "json:user.id" in got.message


def test_owner_down_keeps_the_key_for_a_wait_and_never_picks_another() -> None:
    down = state("svc", ready=False, wait_ms=500)
    got = decide(b"/svc/x", KEY7, routes(down))
    assert isinstance(got, Refusal) and got.code == "shard_unavailable"
    assert got.key == "7" and got.state is down
    assert f"ordinal {ordinal_for('7', 'modulo', 3)}" in got.message


def test_bad_path() -> None:
    got = decide(b"*", KEY7, routes(state("svc")))
    assert isinstance(got, Refusal) and got.code == "bad_request"


def test_slot_mode_routes_by_the_slot_map_not_the_default_function() -> None:
    """Slot mode: the owner the assignment names (the default function would give
    ordinal_for('7', 3)); a migrating slot is a Refusal that keeps the key for wait:<ms>."""
    from dataclasses import replace

    from sidecar.slots import parse

    slot = ordinal_for("7", "modulo", 8)
    owner = 2 if ordinal_for("7", "modulo", 3) != 2 else 0
    assignment = ",".join(f"{s}:{owner if s == slot else 1}" for s in range(8))
    smap = parse({"shard.io/slots": "8", "shard.io/epoch": "4",
                  "shard.io/assignment": assignment})
    slotted = replace(state("svc"), slotted=True, slotmap=smap)
    got = decide(b"/svc/x", KEY7, routes(slotted))
    assert isinstance(got, Routed) and (got.ordinal, got.slot) == (owner, slot)
    assert got.shard.address == (f"10.0.0.{owner}", 80)
    moving = parse({"shard.io/slots": "8", "shard.io/epoch": "5", "shard.io/assignment":
                    assignment, "shard.io/migrating": f"{slot}:{owner}>1"})
    got = decide(b"/svc/x", KEY7, routes(replace(slotted, slotmap=moving)))
    assert isinstance(got, Refusal) and got.code == "shard_unavailable" and got.key == "7"
    assert "is moving" in got.message
    got = decide(b"/svc/x", KEY7, routes(replace(slotted, slotmap=None)))
    assert isinstance(got, Refusal) and got.code == "shard_map_not_ready"
    assert isinstance(decide(b"/svc/x", KEY7, routes(state("svc"))), Routed)  # default: -1
    assert decide(b"/svc/x", KEY7, routes(state("svc"))).slot == -1  # type: ignore[union-attr]
