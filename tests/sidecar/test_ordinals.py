"""``spec.ordinals.start``: key-function result i is served by the pod with ordinal start + i.

SPEC §2 "Ordinals": the ordinal is the pod's own (its ``apps.kubernetes.io/pod-index``
label, or the number in its name), and ``X-Shard-Ordinal``, ``/_shard/resolve``,
metrics and slot assignments all name that pod ordinal.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from shardmesh.accounts_backend import Ledger
from shardmesh.route_cmd import main as route_main
from sidecar.annotations import parse_routes
from sidecar.discovery import (
    PodInfo,
    RouteWatch,
    Snapshot,
    StatefulSetInfo,
    pod_info,
    snapshot,
    statefulset_info,
)
from sidecar.errors import ProxyError
from sidecar.metrics import Stats
from sidecar.shardfn import STRATEGIES, ordinal_for, pod_ordinal
from sidecar.shardmap import Shard, ShardMap, resolve
from tests.sidecar.backends import Backend
from tests.sidecar.harness import SidecarThread, get_json, request

SPEC = parse_routes({"shard.io/backend": "ledger:8080"}, "shop")[0]


def pod(name: str, index: str | None = None, owner: str = "ledger", ip: str = "127.1.0.1",
        ) -> dict[str, Any]:
    labels = {"statefulset.kubernetes.io/pod-name": name}
    if index is not None:
        labels["apps.kubernetes.io/pod-index"] = index
    return {"metadata": {"name": name, "labels": labels, "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": owner, "uid": "u"}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}


def sts(replicas: int, start: object = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"replicas": replicas, "template": {"spec": {"containers": [
        {"name": "app", "ports": [{"containerPort": 8080}]}]}}}
    if start is not None:
        spec["ordinals"] = {"start": start}
    return {"metadata": {"name": "ledger"}, "spec": spec}


# --- the arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("start", [0, 1, 7, 1000])
def test_pod_ordinal_is_start_plus_the_key_function(strategy: str, start: int) -> None:
    for n in (1, 3, 5):
        for key in [str(k) for k in range(40)] + ["user-1", "日本"]:
            index = ordinal_for(key, strategy, n)
            assert pod_ordinal(key, strategy, n, start) == start + index
            assert start <= pod_ordinal(key, strategy, n, start) < start + n


def test_modulo_with_start_1_and_3_replicas() -> None:
    # The case: pods ledger-1..3; 3 -> ledger-1, 1 -> ledger-2, 2 -> ledger-3.
    assert [pod_ordinal(str(k), "modulo", 3, 1) for k in range(6)] == [1, 2, 3, 1, 2, 3]
    with pytest.raises(ValueError, match="start must be >= 0, got -1"):
        pod_ordinal("1", "modulo", 3, -1)


# --- reading the StatefulSet and its pods --------------------------------------------------


@pytest.mark.parametrize(("start", "expected"), [(None, 0), (0, 0), (1, 1), (5, 5)])
def test_statefulset_info_reads_ordinals_start(start: object, expected: int) -> None:
    info = statefulset_info(sts(3, start))
    assert (info.replicas, info.start, info.template_port, info.problem) == (3, expected, 8080, "")


@pytest.mark.parametrize("start", [-1, "1", 1.5, True])
def test_a_bad_ordinals_start_is_a_problem_not_a_guess(start: object) -> None:
    info = statefulset_info(sts(3, start))
    assert "spec.ordinals.start" in info.problem and repr(start) in info.problem
    assert snapshot(SPEC, info, []) == Snapshot(0, 0, [], info.problem)


@pytest.mark.parametrize(
    ("the_pod", "ordinal"),
    [
        pytest.param(pod("ledger-3", "3"), 3, id="label-and-name-agree"),
        pytest.param(pod("ledger-3"), 3, id="no-label-name-suffix"),
        pytest.param(pod("ledger-3", "2"), None, id="label-disagrees-with-name"),
        pytest.param(pod("ledger-3", "03"), None, id="label-leading-zero"),
        pytest.param(pod("ledger-3", "x"), None, id="label-not-a-number"),
        pytest.param(pod("ledger-3", ""), None, id="label-empty"),
        pytest.param(pod("other-3", "3"), None, id="other-name-prefix"),
        pytest.param(pod("ledger-3", "3", owner="other"), None, id="other-owner"),
    ],
)
def test_pod_ordinal_from_label_or_name(the_pod: dict[str, Any], ordinal: int | None) -> None:
    info = pod_info(the_pod, "ledger")
    assert (info.ordinal if info else None) == ordinal


def test_snapshot_maps_index_i_to_pod_start_plus_i() -> None:
    pods = [PodInfo(o, True, f"127.1.0.{o}", f"ledger-{o}") for o in (0, 1, 2, 3, 4)]
    shot = snapshot(SPEC, StatefulSetInfo(3, 8080, start=1), pods)
    assert (shot.count, shot.start, shot.problem) == (3, 1, "")
    assert [(s.ordinal, s.pod, s.address) for s in shot.shards] == [
        (1, "ledger-1", ("127.1.0.1", 8080)), (2, "ledger-2", ("127.1.0.2", 8080)),
        (3, "ledger-3", ("127.1.0.3", 8080))]


# --- the map -----------------------------------------------------------------------------


def started_map(start: int, count: int = 3) -> ShardMap:
    shard_map = ShardMap()
    shard_map.set_specs([SPEC])
    shards = [Shard(start + i, True, (f"127.1.0.{start + i}", 8080), f"ledger-{start + i}")
              for i in range(count)]
    shard_map.update("ledger", count=count, start=start, shards=shards)
    return shard_map


def test_resolve_names_the_pod_ordinal_and_its_headers() -> None:
    state = started_map(1).routes[b"ledger"]
    for k in range(30):
        ordinal, shard = resolve(state, str(k))
        assert ordinal == shard.ordinal == 1 + k % 3
        assert shard.pod == f"ledger-{ordinal}"
        assert shard.address == (f"127.1.0.{ordinal}", 8080)
        assert shard.upstream_header == b"X-Shard-Ordinal: %d\r\nX-Shard-Count: 3\r\n" % ordinal
        assert shard.response_header == b"X-Shard-Ordinal: %d\r\n" % ordinal


def test_an_unready_pod_is_named_by_its_own_ordinal() -> None:
    shard_map = ShardMap()
    shard_map.set_specs([SPEC])
    shard_map.update("ledger", count=3, start=1,
                     shards=[Shard(1, True, ("h", 1)), Shard(2, True, ("h", 2)), Shard(3)])
    with pytest.raises(ProxyError) as caught:
        resolve(shard_map.routes[b"ledger"], "2")  # 2 mod 3 = 2 -> pod ordinal 3
    assert caught.value.details["ordinal"] == 3 and "ledger-3" in caught.value.message


def test_shards_out_of_order_never_become_a_map() -> None:
    shard_map = ShardMap()
    shard_map.set_specs([SPEC])
    shard_map.update("ledger", count=2, start=1, shards=[Shard(0, True, ("h", 1)),
                                                           Shard(1, True, ("h", 2))])
    state = shard_map.routes[b"ledger"]
    assert not state.synced and "shard 0 is ordinal 0, expected 1" in state.problem
    with pytest.raises(ProxyError) as caught:
        resolve(state, "1")
    assert caught.value.code == "shard_map_not_ready"


def test_a_change_of_start_alone_replaces_the_map() -> None:
    shard_map = started_map(0)
    shard_map.update("ledger", count=3, start=1, shards=[
        Shard(o, True, (f"127.1.0.{o}", 8080), f"ledger-{o}") for o in (1, 2, 3)])
    state = shard_map.routes[b"ledger"]
    assert state.start == 1 and resolve(state, "2")[0] == 3


def test_watched_statefulset_start_change_rebuilds_the_map_live() -> None:
    published: list[Snapshot] = []
    watch = RouteWatch(SPEC, client=None, publish=published.append, stats=Stats())
    watch._replace("sts", [sts(3)])
    watch._replace("pods", [pod(f"ledger-{o}", str(o), ip=f"127.1.0.{o}") for o in (0, 1, 2)])
    assert [s.ordinal for s in published[-1].shards] == [0, 1, 2]
    watch._apply("sts", "MODIFIED", sts(3, 1))
    shot = published[-1]
    assert (shot.start, [s.ordinal for s in shot.shards]) == (1, [1, 2, 3])
    # ledger-3 does not exist yet: its keys wait for it, they never go to ledger-0.
    assert [s.ready for s in shot.shards] == [True, True, False]
    watch._apply("pods", "ADDED", pod("ledger-3", "3", ip="127.1.0.3"))
    assert all(s.ready for s in published[-1].shards)


def test_describe_lists_pod_ordinals_and_start() -> None:
    route = started_map(1).describe()["routes"][0]
    assert route["start"] == 1
    assert [(s["ordinal"], s["pod"]) for s in route["shards"]] == [
        (1, "ledger-1"), (2, "ledger-2"), (3, "ledger-3")]


# --- the data plane, headers, introspection and metrics --------------------------------------


def test_requests_headers_resolve_and_metrics_name_the_pod_ordinal(
        make_sidecar: Callable[..., SidecarThread]) -> None:
    backends = {o: Backend(ordinal=o).start() for o in (1, 2, 3)}
    try:
        sidecar = make_sidecar("--route", "svc=" + ",".join(b.address for b in backends.values()))
        shards = [Shard(o, True, ("127.0.0.1", b.port), f"svc-{o}") for o, b in backends.items()]
        sidecar.call(lambda: sidecar.sidecar.map.update("svc", count=3, start=1, shards=shards))
        for k in range(12):
            owner = 1 + k % 3
            status, head, body = get_json(sidecar.port, "/svc/x", {"X-Shard-Key": str(k)})
            assert (status, body["ordinal"], head["x-shard-ordinal"]) == (200, owner, str(owner))
            assert (body["headers"]["x-shard-ordinal"], body["headers"]["x-shard-count"]) == (
                str(owner), "3")
            _, _, info = get_json(sidecar.port, f"/_shard/resolve?route=svc&key={k}")
            assert (info["ordinal"], info["pod"], info["ready"]) == (owner, f"svc-{owner}", True)
        _, _, metrics = request(sidecar.admin_port, "GET", "/metrics")
        text = metrics.decode()
        assert 'code="200",ordinal="3",route="svc"' in text and 'ordinal="0"' not in text
    finally:
        for backend in backends.values():
            backend.stop()


# --- the accounts backend and `shardmesh route` ------------------------------------------------


def test_accounts_backend_checks_ownership_against_its_pod_ordinal() -> None:
    ledger = Ledger(ordinal=3, strategy="modulo", name="ledger-3", start=1)
    assert ledger.ownership_error("2", "3", "3") is None  # 2 mod 3 = 2 -> ordinal 1 + 2
    assert ledger.ownership_error("5", "3", "3") is None
    assert ledger.ownership_error("3", "3", "3") == "account 3 belongs to ordinal 1 of 3 " \
        "(ordinals start at 1), not 3"
    assert ledger.ownership_error("2", "2", "3") == "X-Shard-Ordinal is '2', this is ordinal 3"


def test_route_command_takes_the_start(capsys: pytest.CaptureFixture[str]) -> None:
    assert route_main(["--count", "3", "--start", "1", "3", "4", "5"]) == 0
    assert capsys.readouterr().out == "3\t1\n4\t2\n5\t3\n"
    assert route_main(["--count", "3", "--start", "1", "--json", "5"]) == 0
    assert json.loads(capsys.readouterr().out) == {"key": "5", "strategy": "modulo", "count": 3,
                                                   "start": 1, "ordinal": 3}
    assert route_main(["--count", "3", "--start", "-1", "5"]) == 2
    assert "--start must be >= 0, got -1" in capsys.readouterr().err
