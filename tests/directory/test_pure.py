"""The directory's pure parts: maps, the wire format, resolve, selectors, HTTP heads, caches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from directory.httpwire import BadRequest, chunk, parse_head
from directory.maps import DirMap, MapKey, build, from_wire, to_wire
from directory.resolve import Refusal, resolve, strategy_of
from directory.settings import load
from directory.ttlcache import TtlCache
from sidecar.annotations import Backend, KeySource, RouteSpec
from sidecar.discovery import pod_info, snapshot
from sidecar.selectors import label_selector
from sidecar.shardfn import ordinal_for

KEY = MapKey("ns", "web")


def sts(replicas: int = 3, start: int | None = None, annotations: dict[str, str] | None = None
        ) -> dict[str, Any]:
    spec: dict[str, Any] = {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                            "template": {"spec": {"containers": [
                                {"name": "a", "ports": [{"containerPort": 8080}]}]}}}
    if start is not None:
        spec["ordinals"] = {"start": start}
    return {"metadata": {"name": "web", "annotations": annotations or {}}, "spec": spec}


def pod(ordinal: int, ready: bool = True, owner: str = "web") -> dict[str, Any]:
    return {"metadata": {"name": f"web-{ordinal}",
                         "ownerReferences": [{"kind": "StatefulSet", "name": owner}]},
            "status": {"podIP": f"10.0.0.{ordinal}", "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


def pods(*objs: dict[str, Any]) -> list[Any]:
    return [p for p in (pod_info(o, "web") for o in objs) if p is not None]


def test_wire_round_trip_feeds_the_sidecars_own_snapshot() -> None:
    m = build(KEY, sts(3), pods(pod(0), pod(1, ready=False), pod(2), pod(5, owner="x")), None)
    assert [p.name for p in m.pods] == ["web-0", "web-1", "web-2"]  # web-5 is not its pod
    inputs = from_wire(to_wire(m))
    assert inputs.sts == m.sts and inputs.pods == m.pods and inputs.slot_map is None
    spec = RouteSpec(Backend("r", "web", "ns", 9090), KeySource("header", "X-Shard-Key"),
                     "modulo", 0, 1.0)
    shot = snapshot(spec, inputs.sts, inputs.pods)
    assert [(s.ordinal, s.ready, s.address) for s in shot.shards] == [
        (0, True, ("10.0.0.0", 9090)), (1, False, ("10.0.0.1", 9090)),
        (2, True, ("10.0.0.2", 9090))]


def test_missing_statefulset_is_a_map_that_says_so() -> None:
    m = build(KEY, None, [], None)
    wire = to_wire(m)
    assert wire["found"] is False and wire["problem"] == "statefulset ns/web not found"
    assert from_wire(wire).sts is None
    with pytest.raises(Refusal) as err:
        resolve(m, "1", "modulo")
    assert err.value.status == 503 and "not found" in err.value.message


def test_bad_slot_annotations_keep_the_last_good_map() -> None:
    good = build(KEY, sts(2, annotations={"shard.io/slots": "4", "shard.io/epoch": "2",
                                          "shard.io/assignment": "0-1:0,2-3:1"}), [], None)
    assert good.slot_map is not None and not good.slot_problem
    bad = build(KEY, sts(2, annotations={"shard.io/slots": "4", "shard.io/epoch": "3",
                                         "shard.io/assignment": "0-1:0"}), [], good.slot_map)
    assert bad.slot_map == good.slot_map
    assert "shard.io/assignment" in bad.slot_problem and "'0-1:0'" in bad.slot_problem
    back = build(KEY, sts(2, annotations={"shard.io/slots": "4", "shard.io/epoch": "1",
                                          "shard.io/assignment": "0-3:0"}), [], good.slot_map)
    assert back.slot_map == good.slot_map and "went back from 2 to 1" in back.slot_problem
    plain = build(KEY, sts(2), [], good.slot_map)
    assert plain.slot_map is None and not plain.slot_problem


def test_resolve_matches_shardfn_with_a_start() -> None:
    m = build(KEY, sts(5, start=2), pods(*(pod(i) for i in range(2, 7))), None)
    for key in ("0", "7", "-3", "user-1", "日本"):
        for strategy in ("modulo", "jump", "rendezvous"):
            answer = resolve(m, key, strategy)  # type: ignore[arg-type]
            ordinal = 2 + ordinal_for(key, strategy, 5)
            assert answer["ordinal"] == ordinal and answer["pod"] == f"web-{ordinal}"
            assert answer["address"] == f"10.0.0.{ordinal}:8080" and answer["ready"]


def test_resolve_in_slot_mode_names_slot_epoch_and_the_missing_init() -> None:
    m = build(KEY, sts(2, annotations={"shard.io/slots": "4", "shard.io/epoch": "7",
                                       "shard.io/assignment": "0-1:0,2-3:1"}),
              pods(pod(0), pod(1, ready=False)), None)
    answer = resolve(m, "3", "modulo")
    assert (answer["slot"], answer["slots"], answer["epoch"], answer["ordinal"]) == (3, 4, 7, 1)
    assert answer["ready"] is False and "count" not in answer
    uninit = build(KEY, sts(2, annotations={"shard.io/slots": "4"}), [], None)
    with pytest.raises(Refusal) as err:
        resolve(uninit, "3", "modulo")
    assert "shardmesh reshard web --init" in err.value.message


def test_strategy_and_key_are_checked() -> None:
    assert strategy_of(None) == "modulo"
    with pytest.raises(Refusal) as err:
        strategy_of("ring")
    assert "'ring'" in err.value.message
    with pytest.raises(Refusal) as err:
        resolve(build(KEY, sts(1), [], None), "", "modulo")
    assert err.value.code == "missing_shard_key"


def test_label_selector() -> None:
    assert label_selector({"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [
        {"key": "t", "operator": "In", "values": ["y", "x"]},
        {"key": "e", "operator": "Exists"}, {"key": "n", "operator": "DoesNotExist"}]}) \
        == "a=1,b=2,t in (x,y),e,!n"
    with pytest.raises(ValueError, match="empty"):
        label_selector({})
    with pytest.raises(ValueError, match="'k'.*'Near'"):
        label_selector({"matchExpressions": [{"key": "k", "operator": "Near"}]})


def test_wire_errors_name_the_map() -> None:
    with pytest.raises(ValueError, match="ns/web"):
        from_wire({"namespace": "ns", "statefulset": "web", "found": True, "replicas": "x"})


def test_http_head() -> None:
    req = parse_head(b"GET /v1/watch?namespace=a&statefulset=b&generation=3 HTTP/1.1\r\n"
                     b"Authorization: Bearer t\r\nConnection: close\r\n\r\n")
    assert req.path == "/v1/watch" and req.query["generation"] == "3"
    assert req.headers["authorization"] == "Bearer t" and not req.keep_alive
    for bad in (b"GET /\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n"):
        with pytest.raises(BadRequest):
            parse_head(bad)
    assert chunk(b"abc\n") == b"4\r\nabc\n\r\n"


def test_ttl_cache_expires_bounds_and_loads_once() -> None:
    now = [0.0]
    cache: TtlCache[int] = TtlCache(2, clock=lambda: now[0])
    cache.put("a", 1, 10)
    cache.put("b", 2, 10)
    cache.put("c", 3, 10)
    assert cache.get("a") is None and cache.get("c") == 3  # the least recent went first
    now[0] = 11
    assert cache.get("c") is None
    calls = []

    async def load() -> int:
        calls.append(1)
        await asyncio.sleep(0.01)
        return 5

    async def many() -> list[int]:
        return await asyncio.gather(*(cache.get_or_load("k", load, lambda v: 10)
                                      for _ in range(50)))

    assert asyncio.run(many()) == [5] * 50 and len(calls) == 1


def test_settings_name_the_bad_flag() -> None:
    assert load(["--heartbeat-s", "2"], {"SHARDMESH_PORT": "9443"}).port == 9443
    with pytest.raises(ValueError, match="--heartbeat-s must be more than 0"):
        load(["--heartbeat-s", "0"], {})
    with pytest.raises(ValueError, match="'x' for --port"):
        load(["--port", "x"], {})
    with pytest.raises(ValueError, match="needs --cert-file"):
        load(["--cert-mode", "file"], {})


def test_dirmap_equality_ignores_nothing_a_client_sees() -> None:
    a = build(KEY, sts(2), pods(pod(0), pod(1)), None)
    b = build(KEY, sts(2), pods(pod(1), pod(0)), None)
    c = build(KEY, sts(2), pods(pod(0), pod(1, ready=False)), None)
    assert a == b and a != c and isinstance(a, DirMap)
