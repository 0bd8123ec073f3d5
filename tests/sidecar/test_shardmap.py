"""Pure parts of the map: the snapshot rules, pod filtering, route updates, file reloads."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.annotations import parse_routes
from sidecar.discovery import (
    PodInfo,
    Snapshot,
    StatefulSetInfo,
    pod_info,
    snapshot,
    statefulset_info,
)
from sidecar.downward import format_downward_file
from sidecar.errors import ProxyError
from sidecar.reload import AnnotationsFile
from sidecar.shardmap import Shard, ShardMap, resolve

SPEC = parse_routes({"shard.io/backend": "ledger"}, "shop")[0]


def pod(name: str, *, ready: bool = True, ip: str | None = "127.1.2.3", owner: str = "ledger",
        deleting: bool = False) -> dict[str, Any]:
    """A pod as the API sends it (JSON), which is what the sidecar reads."""
    meta: dict[str, Any] = {"name": name, "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": owner, "uid": "u"}]}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"conditions": [{"type": "Ready",
                                              "status": "True" if ready else "False"}]}
    if ip is not None:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


@pytest.mark.parametrize(
    ("the_pod", "expected"),
    [
        pytest.param(pod("ledger-2"), PodInfo(2, True, "127.1.2.3", "ledger-2"), id="ready"),
        pytest.param(pod("ledger-0", ready=False), PodInfo(0, False, "127.1.2.3", "ledger-0"),
                     id="not-ready"),
        pytest.param(pod("ledger-1", deleting=True), PodInfo(1, False, "127.1.2.3", "ledger-1"),
                     id="terminating"),
        pytest.param(pod("ledger-1", ip=None), PodInfo(1, False, None, "ledger-1"), id="no-ip"),
        pytest.param(pod("ledger-01"), None, id="leading-zero-is-not-ours"),
        pytest.param(pod("ledger-x-1"), None, id="other-name"),
        pytest.param(pod("ledger-1", owner="other"), None, id="other-owner"),
    ],
)
def test_pod_info(the_pod: dict[str, Any], expected: PodInfo | None) -> None:
    assert pod_info(the_pod, "ledger") == expected


def test_statefulset_info_takes_desired_replicas_and_first_port() -> None:
    sts = {"spec": {"replicas": 5, "selector": {}, "serviceName": "x", "template": {"spec": {
        "containers": [{"name": "a"}, {"name": "b", "ports": [{"containerPort": 9000},
                                                               {"containerPort": 9001}]}]}}}}
    assert statefulset_info(sts) == StatefulSetInfo(replicas=5, template_port=9000)
    assert statefulset_info({"spec": {}}) == StatefulSetInfo(replicas=1, template_port=None)


def test_snapshot_counts_desired_replicas_and_marks_missing_pods() -> None:
    pods = [PodInfo(0, True, "127.1.1.1", "ledger-0"), PodInfo(2, True, "127.1.1.3", "ledger-2"),
            PodInfo(7, True, "127.1.1.8", "ledger-7")]  # ordinal 7 is beyond N: ignored
    shot = snapshot(SPEC, StatefulSetInfo(3, 8080), pods)
    assert (shot.count, shot.start, shot.problem) == (3, 0, "")
    assert shot.shards == [Shard(0, True, ("127.1.1.1", 8080), "ledger-0"),
                      Shard(1, False, None, "ledger-1"),
                      Shard(2, True, ("127.1.1.3", 8080), "ledger-2")]


def test_snapshot_without_statefulset_or_port() -> None:
    assert snapshot(SPEC, None, []) == Snapshot(0, 0, [], "statefulset shop/ledger not found")
    shot = snapshot(SPEC, StatefulSetInfo(1, None), [PodInfo(0, True, "127.1.1.1", "ledger-0")])
    assert shot.count == 1 and not shot.shards[0].ready and "no port" in shot.problem


def test_resolve_never_answers_for_another_ordinal() -> None:
    shard_map = ShardMap()
    shard_map.set_specs([SPEC])
    with pytest.raises(ProxyError) as caught:
        resolve(shard_map.routes[b"ledger"], "7")
    assert caught.value.code == "shard_map_not_ready"
    shard_map.update("ledger", count=3, shards=[Shard(0, True, ("127.1.1.1", 1)),
                                                 Shard(1, False), Shard(2, True, ("h", 2))])
    state = shard_map.routes[b"ledger"]
    assert resolve(state, "5") == (2, state.shards[2])
    generation = shard_map.generation
    shard_map.update("ledger", count=3, shards=list(state.shards))  # a status heartbeat
    assert shard_map.generation == generation and shard_map.routes[b"ledger"] is state
    with pytest.raises(ProxyError) as caught:
        resolve(state, "4")  # 4 mod 3 = 1, which is down: no fallback to 0 or 2
    assert (caught.value.code, caught.value.details["ordinal"]) == ("shard_unavailable", 1)


def test_set_specs_keeps_the_map_when_only_options_change() -> None:
    shard_map = ShardMap()
    assert shard_map.set_specs([SPEC]) == [SPEC]
    shard_map.update("ledger", count=1, shards=[Shard(0, True, ("h", 1))])
    jump = parse_routes({"shard.io/backend": "ledger", "shard.io/strategy": "jump"}, "shop")[0]
    assert shard_map.set_specs([jump]) == []
    state = shard_map.routes[b"ledger"]
    assert state.synced and state.spec.strategy == "jump"
    moved = parse_routes({"shard.io/backend": "ledger=other"}, "shop")[0]
    assert shard_map.set_specs([moved]) == [moved]
    assert not shard_map.routes[b"ledger"].synced


def swap(path: Path, annotations: dict[str, str]) -> None:
    data = path.parent / f"data-{time.monotonic_ns()}"
    data.write_text(format_downward_file(annotations))
    tmp = path.parent / f"link-{time.monotonic_ns()}"
    tmp.symlink_to(data)
    os.replace(tmp, path)


def test_annotations_file_sees_symlink_swaps_and_keeps_good_routes(tmp_path: Path) -> None:
    path = tmp_path / "annotations"
    swap(path, {"shard.io/backend": "ledger"})
    watched = AnnotationsFile(str(path), "shop")
    routes = watched.read()
    assert routes is not None and routes[0].backend.statefulset == "ledger"
    assert not watched.changed()
    swap(path, {"shard.io/backend": "ledger", "shard.io/strategy": "ring"})
    assert watched.changed()
    assert watched.read() is None
    assert "invalid value 'ring' for annotation 'shard.io/strategy'" in watched.error
    swap(path, {"shard.io/backend": "audit:9000"})
    routes = watched.read()
    assert routes is not None and routes[0].backend.port == 9000 and watched.error == ""
