"""``shardmesh directory`` on the real control plane, with real service-account tokens.

One directory process serves the module (its own namespace, the manifests'
RBAC); each test makes its StatefulSets in a fresh namespace and plays the
kubelet there, so readiness and pod IPs come from real status updates.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from directory.client import DirectoryError
from sidecar.shardfn import ordinal_for
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kubelet import Kubelet
from tests.cluster.naming import namespace_name
from tests.cluster.waiting import wait_for
from tests.directory.harness import (
    DirectoryProcess,
    grant,
    grant_shardmaps,
    settle,
    subscribed,
    token,
)

STS = "web"
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "shard_vectors.json"


@pytest.fixture(scope="module")
def directory(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[DirectoryProcess]:
    api = client.CoreV1Api(control_plane.api_client())
    ns = namespace_name("directory-home")
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    proc = DirectoryProcess(control_plane, ns, tmp_path_factory.mktemp("directory"))
    try:
        yield proc.start()
    finally:
        proc.stop()
        print(proc.logs()[-4000:])
        api.delete_namespace(ns)


def statefulset(replicas: int, annotations: dict[str, str] | None = None,
                start: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceName": STS, "replicas": replicas, "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": {"app": STS}},
        "template": {"metadata": {"labels": {"app": STS}},
                     "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1",
                                              "ports": [{"containerPort": 8080}]}]}}}
    if start is not None:
        spec["ordinals"] = {"start": start}
    return {"metadata": {"name": STS, "annotations": annotations or {}}, "spec": spec}


@pytest.fixture
def apps(control_plane: ControlPlane) -> client.AppsV1Api:
    return client.AppsV1Api(control_plane.api_client())


@pytest.fixture
def reader(control_plane: ControlPlane, namespace: str) -> str:
    """A token of a service account that may watch the namespace's StatefulSets and pods."""
    api = control_plane.api_client()
    grant(api, namespace, "reader")
    return token(api, namespace, "reader")


def ready_pods(m: dict[str, Any]) -> list[str]:
    return sorted(p["name"] for p in m["pods"] if p["ready"])


def test_snapshot_then_a_generation_per_change(
    directory: DirectoryProcess, namespace: str, kubelet: Kubelet, apps: client.AppsV1Api,
    reader: str,
) -> None:
    kubelet.watch(namespace)
    apps.create_namespaced_stateful_set(namespace, statefulset(2))
    with subscribed(directory, reader, namespace, STS) as sub:
        first = sub.wait_snapshot("web-0 and web-1 ready",
                                  lambda m: ready_pods(m) == ["web-0", "web-1"])
        assert first["map"]["replicas"] == 2 and first["map"]["port"] == 8080
        pod = next(p for p in first["map"]["pods"] if p["name"] == "web-1")
        assert pod["ip"] == kubelet.ip_for(namespace, "web-1")

        apps.patch_namespaced_stateful_set_scale(STS, namespace, {"spec": {"replicas": 3}})
        scaled = sub.wait_snapshot("replicas 3, web-2 ready",
                                   lambda m: m["replicas"] == 3 and "web-2" in ready_pods(m))
        assert scaled["generation"] > first["generation"]

        kubelet.set_ready(namespace, "web-1", False)
        unready = sub.wait_snapshot("web-1 not ready",
                                    lambda m: ready_pods(m) == ["web-0", "web-2"])
        assert unready["generation"] > scaled["generation"]
        generations = [s["generation"] for s in sub.snapshots()]
        assert generations == sorted(set(generations)), f"a generation repeated: {generations}"
        assert all(s["source"] == first["source"] for s in sub.snapshots())


def test_no_token_is_401_and_no_rights_is_403_naming_the_permission(
    directory: DirectoryProcess, control_plane: ControlPlane, namespace: str,
    apps: client.AppsV1Api, reader: str,
) -> None:
    apps.create_namespaced_stateful_set(namespace, statefulset(1))
    query = f"/v1/watch?namespace={namespace}&statefulset={STS}"
    status, body = directory.get(query)
    assert status == 401 and body["error"] == "unauthenticated", body
    status, body = directory.get(query, bearer="not-a-token")
    assert status == 401 and "not accepted" in body["message"], body

    # A service account of another namespace, with no grant at all: 403 naming shardmaps.
    other = namespace_name("directory-other")
    api = control_plane.api_client()
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        outsider = token(api, other, "outsider")
        status, body = directory.get(query, bearer=outsider)
        assert status == 403 and body["error"] == "forbidden", body
        assert f"system:serviceaccount:{other}:outsider" in body["message"]
        assert body["missing"] == [f"watch shardmaps.shard.io '{STS}' in namespace '{namespace}'"]
        status, body = directory.get(
            f"/v1/resolve?namespace={namespace}&statefulset={STS}&key=1", bearer=outsider)
        assert status == 403 and "map" not in body
        assert body["missing"] == [f"get shardmaps.shard.io '{STS}' in namespace '{namespace}'"]

        # Old-style rights in one's own namespace are no rights in another.
        status, body = directory.get(f"/v1/watch?namespace={other}&statefulset={STS}",
                                     bearer=reader)
        assert status == 403 and f"in namespace '{other}'" in body["message"], body
        with subscribed(directory, reader, namespace, STS) as sub:
            sub.wait_snapshot("the map", lambda m: m["found"])
            status, maps = directory.get("/v1/maps", bearer=outsider)
            assert status == 200 and maps["maps"] == [] and maps["informers"] >= 1
            status, maps = directory.get("/v1/maps", bearer=reader)
            assert [m["map"]["namespace"] for m in maps["maps"]] == [namespace]
    finally:
        core.delete_namespace(other)


def test_a_service_account_with_no_rbac_reads_its_own_namespace(
    directory: DirectoryProcess, control_plane: ControlPlane, namespace: str,
    apps: client.AppsV1Api,
) -> None:
    """SPEC §7: a sidecar needs no Kubernetes read rights for its own namespace's maps."""
    apps.create_namespaced_stateful_set(namespace, statefulset(1))
    nobody = token(control_plane.api_client(), namespace, "nobody")
    with subscribed(directory, nobody, namespace, STS) as sub:
        sub.wait_snapshot("the map", lambda m: m["found"] and m["replicas"] == 1)
        status, maps = directory.get(f"/v1/maps?namespace={namespace}", bearer=nobody)
        assert status == 200 and [m["map"]["namespace"] for m in maps["maps"]] == [namespace]
    # ...and it really has no read rights of its own: the API server refuses it.
    review = client.AuthorizationV1Api(control_plane.api_client()).create_subject_access_review(
        {"spec": {"user": f"system:serviceaccount:{namespace}:nobody",
                  "resourceAttributes": {"namespace": namespace, "verb": "list",
                                         "resource": "pods"}}})
    assert not review.status.allowed


def test_the_shardmap_reader_role_grants_another_namespace(
    directory: DirectoryProcess, control_plane: ControlPlane, namespace: str,
    apps: client.AppsV1Api,
) -> None:
    apps.create_namespaced_stateful_set(namespace, statefulset(1))
    other = namespace_name("directory-client")
    api = control_plane.api_client()
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        outsider = token(api, other, "client")
        query = f"/v1/watch?namespace={namespace}&statefulset={STS}"
        assert directory.get(query, bearer=outsider)[0] == 403
        grant_shardmaps(api, other, "client", namespace)
        # The denial was cached (5 s): the grant shows once it expires.
        resolve = f"/v1/resolve?namespace={namespace}&statefulset={STS}&key=1"
        wait_for(lambda: directory.get(resolve, bearer=outsider)[0] != 403,
                 "the grant to be seen", timeout=20)
        with subscribed(directory, outsider, namespace, STS) as sub:
            sub.wait_snapshot("the map", lambda m: m["found"])
        # The grant is one way: the namespace's own accounts still cannot read the other's.
        status, _ = directory.get(f"/v1/watch?namespace={other}&statefulset={STS}",
                                  bearer=token(api, namespace, "plain"))
        assert status == 403
    finally:
        core.delete_namespace(other)


def test_two_subscribers_share_one_informer_that_stops_after_them(
    directory: DirectoryProcess, namespace: str, apps: client.AppsV1Api, reader: str,
) -> None:
    apps.create_namespaced_stateful_set(namespace, statefulset(1))
    starts = directory.metric("shardmesh_directory_informer_starts_total")
    stops = directory.metric("shardmesh_directory_informer_stops_total")
    with subscribed(directory, reader, namespace, STS) as one, \
            subscribed(directory, reader, namespace, STS) as two:
        a = one.wait_snapshot("first subscriber's map", lambda m: m["found"])
        b = two.wait_snapshot("second subscriber's map", lambda m: m["found"])
        assert a["generation"] == b["generation"]
        assert directory.metric("shardmesh_directory_informer_starts_total") == starts + 1
        _, maps = directory.get(f"/v1/maps?namespace={namespace}", bearer=reader)
        assert [m["subscribers"] for m in maps["maps"]] == [2]
        assert maps["maps"][0]["lists"] == {"sts": 1, "pods": 1}
    wait_for(lambda: directory.metric("shardmesh_directory_informer_stops_total") == stops + 1,
             "the informer to stop after both subscribers left", timeout=15)
    _, maps = directory.get(f"/v1/maps?namespace={namespace}", bearer=reader)
    assert maps["maps"] == []


def test_reconnect_at_the_current_generation_gets_no_duplicate(
    directory: DirectoryProcess, namespace: str, apps: client.AppsV1Api, reader: str,
) -> None:
    apps.create_namespaced_stateful_set(namespace, statefulset(1))
    with subscribed(directory, reader, namespace, STS) as keeper:  # keeps the informer up
        last = keeper.wait_snapshot("the map", lambda m: m["found"])
        resume = {"source": last["source"], "generation": last["generation"]}
        with subscribed(directory, reader, namespace, STS, **resume) as again:
            wait_for(lambda: len(again.messages) >= 3, "three heartbeats", timeout=15)
            assert again.snapshots() == [], again.messages
            assert again.messages[0]["type"] == "heartbeat"
            assert again.messages[0]["generation"] == last["generation"]
            apps.patch_namespaced_stateful_set_scale(STS, namespace, {"spec": {"replicas": 2}})
            shot = again.wait_snapshot("replicas 2", lambda m: m["replicas"] == 2)
            assert shot["generation"] > last["generation"]
        stale = {"source": last["source"], "generation": last["generation"]}
        with subscribed(directory, reader, namespace, STS, **stale) as behind:
            shot = behind.wait_snapshot("the current map at once", lambda m: m["replicas"] == 2,
                                        timeout=5)
            assert len(behind.snapshots()) == 1


def vectors() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(VECTORS.read_text())["vectors"]
    return [r for r in rows if r["count"] == 5 and len(r["key"]) < 40][:12]


def test_resolve_agrees_with_shardfn_and_the_vectors(
    directory: DirectoryProcess, namespace: str, kubelet: Kubelet, apps: client.AppsV1Api,
    reader: str,
) -> None:
    kubelet.watch(namespace)
    apps.create_namespaced_stateful_set(namespace, statefulset(5, start=3))
    wait_for(lambda: directory.resolve(reader, namespace, STS, "x")["count"] == 5
             and all(p.status.pod_ip for p in client.CoreV1Api(
                 apps.api_client).list_namespaced_pod(namespace).items),
             "five pods with IPs", timeout=60)
    rows = vectors()
    assert rows, "no vectors for count 5"
    for row in rows:
        for strategy in ("modulo", "jump", "rendezvous"):
            answer = directory.resolve(reader, namespace, STS, row["key"], strategy)
            expected = 3 + ordinal_for(row["key"], strategy, 5)
            assert answer["ordinal"] == expected, (row, strategy, answer)
            if strategy in row:
                assert answer["ordinal"] == 3 + row[strategy], (row, strategy, answer)
            assert answer["pod"] == f"{STS}-{expected}" and answer["count"] == 5
    answer = wait_for(lambda: (a := directory.resolve(reader, namespace, STS, "7")) and
                      a["ready"] and a, "key 7's owner ready", timeout=30)
    assert answer["address"] == f"{kubelet.ip_for(namespace, answer['pod'])}:8080"
    with pytest.raises(DirectoryError) as err:
        directory.resolve(reader, namespace, STS, "7", "nope")
    assert err.value.status == 400 and "nope" in err.value.body["message"]


def test_slot_mode_map_keeps_the_last_good_assignment(
    directory: DirectoryProcess, namespace: str, apps: client.AppsV1Api, reader: str,
) -> None:
    annotations = {"shard.io/slots": "8", "shard.io/assignment": "0-2:0,3-7:1",
                   "shard.io/epoch": "4"}
    apps.create_namespaced_stateful_set(namespace, statefulset(2, annotations))
    with subscribed(directory, reader, namespace, STS) as sub:
        good = sub.wait_snapshot("a slot map", lambda m: m["slots"] is not None)
        assert good["map"]["slots"] == {"shard.io/slots": "8", "shard.io/epoch": "4",
                                        "shard.io/assignment": "0-2:0,3-7:1"}
        for key in ("1", "2", "3", "user-9"):
            answer = directory.resolve(reader, namespace, STS, key)
            slot = ordinal_for(key, "modulo", 8)
            assert (answer["slot"], answer["slots"], answer["epoch"]) == (slot, 8, 4)
            assert answer["ordinal"] == (0 if slot <= 2 else 1) and "count" not in answer
        apps.patch_namespaced_stateful_set(STS, namespace, {"metadata": {"annotations": {
            "shard.io/assignment": "0-2:0,3-6:1", "shard.io/epoch": "5"}}})
        bad = sub.wait_snapshot("the slot problem", lambda m: m["slot_problem"])
        assert "shard.io/assignment" in bad["map"]["slot_problem"]
        assert bad["map"]["slots"] == good["map"]["slots"]
        assert directory.resolve(reader, namespace, STS, "7")["epoch"] == 4


def test_apiserver_restart_costs_at_most_one_list_per_watch(
    directory: DirectoryProcess, control_plane: ControlPlane, namespace: str,
    apps: client.AppsV1Api, reader: str,
) -> None:
    apps.create_namespaced_stateful_set(namespace, statefulset(1))
    with subscribed(directory, reader, namespace, STS) as sub:
        sub.wait_snapshot("the map", lambda m: m["found"])
        control_plane.restart_apiserver()
        fresh = client.AppsV1Api(control_plane.api_client())
        fresh.patch_namespaced_stateful_set_scale(STS, namespace, {"spec": {"replicas": 3}})
        sub.wait_snapshot("replicas 3 after the restart", lambda m: m["replicas"] == 3,
                          timeout=90)
        settle(3)  # any relist storm would show by now
        _, maps = directory.get(f"/v1/maps?namespace={namespace}", bearer=reader)
        lists = maps["maps"][0]["lists"]
        assert lists["sts"] <= 2 and lists["pods"] <= 2, lists
        assert sub.error is None
