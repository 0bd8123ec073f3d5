"""The sidecar against the real kube-apiserver: the shard map follows a StatefulSet.

Backends are real HTTP servers bound to the loopback IPs the simulated kubelet
gives each pod, so a request that reaches backend i reached pod ``S-i``.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from sidecar.downward import format_downward_file
from sidecar.shardfn import ordinal_for
from sidecar.shardmap import RouteState
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kubelet import Kubelet
from tests.cluster.waiting import wait_for
from tests.sidecar.backends import Backend
from tests.sidecar.harness import SidecarThread, request, settings_from_args

pytestmark = pytest.mark.cluster

STS = "ledger"
PORT = 8080


def statefulset(name: str, replicas: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "serviceName": name, "replicas": replicas, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/ledger:1",
                                         "ports": [{"containerPort": PORT}]}]},
            },
        },
    }


def write_annotations(path: Path, annotations: dict[str, str]) -> None:
    """Like the kubelet: write a new file, then swap a symlink onto it."""
    data = path.parent / f"..data-{time.monotonic_ns()}"
    data.write_text(format_downward_file(annotations))
    link = path.parent / f"..link-{time.monotonic_ns()}"
    link.symlink_to(data.name)
    link.replace(path)


class Cluster:
    """One namespace with a StatefulSet, its backends, and a sidecar in Kubernetes mode."""

    def __init__(self, cp: ControlPlane, namespace: str, kubelet: Kubelet, tmp: Path) -> None:
        self.cp, self.namespace, self.kubelet = cp, namespace, kubelet
        self.apps = client.AppsV1Api(cp.api_client())
        self.annotations = tmp / "annotations"
        self.backends: dict[int, Backend] = {}
        self.sidecar: SidecarThread | None = None

    def backend(self, ordinal: int, name: str = STS) -> Backend:
        if ordinal not in self.backends:
            ip = self.kubelet.ip_for(self.namespace, f"{name}-{ordinal}")
            self.backends[ordinal] = Backend(ordinal=ordinal, host=ip, port=PORT).start()
        return self.backends[ordinal]

    def create(self, replicas: int, name: str = STS) -> None:
        for ordinal in range(replicas):
            self.backend(ordinal, name)
        self.apps.create_namespaced_stateful_set(self.namespace, statefulset(name, replicas))

    def scale(self, replicas: int) -> None:
        for ordinal in range(replicas):
            self.backend(ordinal)
        self.apps.patch_namespaced_stateful_set_scale(STS, self.namespace,
                                                      {"spec": {"replicas": replicas}})

    def start_sidecar(self, annotations: dict[str, str]) -> SidecarThread:
        write_annotations(self.annotations, annotations)
        settings = settings_from_args(
            ["--annotations-file", str(self.annotations), "--kubeconfig", str(self.cp.kubeconfig)],
            env={"POD_NAMESPACE": self.namespace, "POD_NAME": "client-0"})
        self.sidecar = SidecarThread(settings).start()
        return self.sidecar

    def state(self, route: str = STS) -> RouteState | None:
        assert self.sidecar is not None
        return self.sidecar.call(lambda: self.sidecar.sidecar.map.get(route))  # type: ignore[union-attr]

    def wait_map(self, check: Callable[[RouteState], bool], what: str,
                 timeout: float = 30) -> float:
        began = time.monotonic()
        wait_for(lambda: (s := self.state()) is not None and check(s), what, timeout=timeout,
                 interval=0.02)
        return time.monotonic() - began

    def stop(self) -> None:
        if self.sidecar is not None:
            self.sidecar.stop()
        for backend in self.backends.values():
            backend.stop()


def all_ready(count: int) -> Callable[[RouteState], bool]:
    return lambda s: s.synced and s.count == count and len(s.shards) == count and all(
        sh.ready for sh in s.shards)



def send(port: int, keys: list[str], conn: http.client.HTTPConnection | None = None,
         ) -> list[tuple[str, int, dict[str, Any] | None, str | None]]:
    """(key, status, body if JSON, X-Shard-Ordinal) for each key, over one keep-alive connection."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = []
    for key in keys:
        conn.request("GET", f"/{STS}/accounts/{key}", headers={"X-Shard-Key": key})
        response = conn.getresponse()
        raw = response.read()
        body = json.loads(raw) if raw.startswith(b"{") else None
        answers.append((key, response.status, body, response.getheader("X-Shard-Ordinal")))
    if own:
        conn.close()
    return answers


def check_backends(cluster: Cluster, strategy: str = "modulo") -> int:
    """Every request any backend saw was its own: returns how many were checked."""
    checked = 0
    for ordinal, backend in cluster.backends.items():
        for seen in backend.seen:
            key = seen.headers["x-shard-key"]
            count = int(seen.headers["x-shard-count"])
            assert seen.headers["x-shard-ordinal"] == str(ordinal), seen
            assert ordinal_for(key, strategy, count) == ordinal, seen  # type: ignore[arg-type]
            checked += 1
    return checked


def test_thousand_keys_reach_their_owner_pod(cluster: Cluster) -> None:
    cluster.create(3)
    sidecar = cluster.start_sidecar({"shard.io/backend": f"{STS}"})  # port from the template
    cluster.wait_map(all_ready(3), "3 ready ordinals")
    state = cluster.state()
    assert state is not None
    for shard in state.shards:
        assert shard.address == (cluster.kubelet.ip_for(cluster.namespace, shard.pod), PORT)
    keys = [str(i) for i in range(700)] + [f"user-{i}" for i in range(300)]
    answers = send(sidecar.port, keys)
    for key, status, body, header in answers:
        owner = ordinal_for(key, "modulo", 3)
        assert (status, body and body["ordinal"], header) == (200, owner, str(owner)), key
    assert check_backends(cluster) == 1000
    status, _, body = request(sidecar.admin_port, "GET", "/readyz")
    assert (status, json.loads(body)["status"]) == (200, "ok")


def test_unready_pod_fails_only_its_keys(cluster: Cluster) -> None:
    cluster.create(3)
    sidecar = cluster.start_sidecar({"shard.io/backend": f"{STS}:{PORT}"})
    cluster.wait_map(all_ready(3), "3 ready ordinals")
    cluster.kubelet.set_ready(cluster.namespace, f"{STS}-1", False)
    cluster.wait_map(lambda s: not s.shards[1].ready and s.shards[0].ready, "ordinal 1 unready")
    keys = [str(i) for i in range(90)]
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=10)
    for key in keys:
        conn.request("GET", f"/{STS}/x", headers={"X-Shard-Key": key})
        response = conn.getresponse()
        body = json.loads(response.read())
        if int(key) % 3 == 1:
            assert (response.status, body["error"]) == (503, "shard_unavailable")
            assert response.getheader("Retry-After") == "1"
        else:
            assert (response.status, body["ordinal"]) == (200, int(key) % 3)
    assert not cluster.backends[1].seen
    cluster.kubelet.set_ready(cluster.namespace, f"{STS}-1", True)
    cluster.wait_map(all_ready(3), "ordinal 1 ready again")
    assert all(status == 200 for _, status, _, _ in send(sidecar.port, keys))


def test_scale_up_is_followed_within_a_second(cluster: Cluster) -> None:
    cluster.create(3)
    sidecar = cluster.start_sidecar({"shard.io/backend": STS, "shard.io/strategy": "jump"})
    cluster.wait_map(all_ready(3), "3 ready ordinals")
    for ordinal in (3, 4):
        cluster.backend(ordinal)
    began = time.monotonic()
    cluster.scale(5)
    cluster.wait_map(lambda s: s.count == 5, "count 5", timeout=5)
    followed = time.monotonic() - began
    assert followed < 1.0, f"the map took {followed:.2f}s to follow the scale-up"
    cluster.wait_map(all_ready(5), "5 ready ordinals")
    answers = send(sidecar.port, [str(i) for i in range(200)])
    assert {body["ordinal"] for _, _, body, _ in answers if body} == {0, 1, 2, 3, 4}
    for key, status, body, _ in answers:
        assert (status, body and body["ordinal"]) == (200, ordinal_for(key, "jump", 5))
    assert check_backends(cluster, "jump") == 200


def test_apiserver_restart_and_410_are_survived_without_misrouting(cluster: Cluster,
                                                          control_plane: ControlPlane) -> None:
    cluster.create(3)
    sidecar = cluster.start_sidecar({"shard.io/backend": STS})
    cluster.wait_map(all_ready(3), "3 ready ordinals")
    stop = threading.Event()
    statuses: dict[int, int] = {}

    def traffic() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=10)
        i = 0
        while not stop.is_set():
            for _, status, _, _ in send(sidecar.port, [str(i)], conn):
                statuses[status] = statuses.get(status, 0) + 1
            i += 1

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    control_plane.restart_apiserver()
    for ordinal in (3,):
        cluster.backend(ordinal)
    cluster.scale(4)  # only a recovered watch can see this
    # 120 s: after the session's earlier apiserver restarts, the controller-manager's
    # informers back off and were seen to create nothing for 45 s after this one.
    cluster.wait_map(all_ready(4), "4 ready ordinals after the restart", timeout=120)
    time.sleep(0.3)
    stop.set()
    thread.join(10)
    assert statuses.get(200, 0) > 50, statuses
    assert set(statuses) <= {200, 503}, statuses
    assert check_backends(cluster) == sum(len(b.seen) for b in cluster.backends.values())
    # The new apiserver's watch cache starts at its newest revision, so the watches that
    # resumed from their last resourceVersion got 410 Gone and listed again.
    restarts = sidecar.sidecar.stats.watch_restarts
    assert restarts.get("expired", 0) >= 1, restarts


def test_annotation_changes_apply_live(cluster: Cluster) -> None:
    cluster.create(3)
    sidecar = cluster.start_sidecar({"shard.io/backend": STS})
    cluster.wait_map(all_ready(3), "3 ready ordinals")
    write_annotations(cluster.annotations, {"shard.io/backend": STS, "shard.io/strategy": "jump",
                                            "shard.io/key": "query:account"})
    cluster.wait_map(lambda s: s.spec.strategy == "jump" and s.synced, "strategy jump", 10)
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=10)
    conn.request("GET", f"/{STS}/x?account=user-77")
    body = json.loads(conn.getresponse().read())
    assert body["ordinal"] == ordinal_for("user-77", "jump", 3)
    # A bad edit is logged and ignored: the running routes stay.
    write_annotations(cluster.annotations, {"shard.io/backend": STS, "shard.io/strategy": "ring"})
    wait_for(lambda: sidecar.sidecar.stats.annotation_reloads["error"] >= 1, "the bad edit read",
             timeout=10)
    state = cluster.state()
    assert state is not None and state.spec.strategy == "jump" and state.synced
    # A route to another StatefulSet appears and syncs.
    cluster.apps.create_namespaced_stateful_set(cluster.namespace, statefulset("audit", 1))
    write_annotations(cluster.annotations, {"shard.io/backend": f"{STS},audit"})
    wait_for(lambda: (a := cluster.state("audit")) is not None and a.synced and a.count == 1,
             "route audit synced", timeout=30)
    state = cluster.state()
    assert state is not None and state.spec.strategy == "modulo" and state.synced


def check_pod_ordinals(cluster: Cluster, start: int, count: int) -> int:
    """Every request a backend saw is its own under ``ordinals.start``: X-Shard-Ordinal is
    the backend's pod ordinal, which is ``start`` + the key function's result."""
    checked = 0
    for ordinal, backend in cluster.backends.items():
        for seen in backend.seen:
            key = seen.headers["x-shard-key"]
            assert seen.headers["x-shard-ordinal"] == str(ordinal), seen
            assert seen.headers["x-shard-count"] == str(count), seen
            assert start + ordinal_for(key, "modulo", count) == ordinal, seen
            checked += 1
    return checked


def pods_from(start: int, count: int) -> Callable[[RouteState], bool]:
    return lambda s: (s.synced and s.count == count and s.start == start
                      and all(sh.ready for sh in s.shards)
                      and [sh.ordinal for sh in s.shards] == list(range(start, start + count)))


def test_ordinals_start_routes_index_i_to_pod_start_plus_i(cluster: Cluster) -> None:
    # ledger-1..3 (backends for ordinals 1..3, bound to those pods' IPs); none for ledger-0.
    for ordinal in (1, 2, 3):
        cluster.backend(ordinal)
    manifest = statefulset(STS, 3)
    manifest["spec"]["ordinals"] = {"start": 1}
    cluster.apps.create_namespaced_stateful_set(cluster.namespace, manifest)
    sidecar = cluster.start_sidecar({"shard.io/backend": STS})
    cluster.wait_map(pods_from(1, 3), "pods ledger-1..3 ready")
    core = client.CoreV1Api(cluster.cp.api_client())
    pods = core.list_namespaced_pod(cluster.namespace).items
    assert sorted((p.metadata.name, p.metadata.labels.get("apps.kubernetes.io/pod-index"))
                  for p in pods) == [("ledger-1", "1"), ("ledger-2", "2"), ("ledger-3", "3")]
    keys = [str(k) for k in range(300)]
    for key, status, body, header in send(sidecar.port, keys):
        owner = 1 + int(key) % 3
        assert (status, body and body["ordinal"], header) == (200, owner, str(owner)), key
    assert {o: len(b.seen) for o, b in cluster.backends.items()} == {1: 100, 2: 100, 3: 100}
    assert check_pod_ordinals(cluster, 1, 3) == 300
    status, _, raw = request(sidecar.port, "GET", f"/_shard/resolve?route={STS}&key=2")
    resolved = json.loads(raw)
    assert (status, resolved["ordinal"], resolved["pod"], resolved["ready"]) == (
        200, 3, f"{STS}-3", True)
    assert resolved["address"] == f"{cluster.kubelet.ip_for(cluster.namespace, 'ledger-3')}:{PORT}"
    _, _, metrics = request(sidecar.admin_port, "GET", "/metrics")
    assert f'code="200",ordinal="3",route="{STS}"' in metrics.decode()
    assert f'ordinal="0",route="{STS}"' not in metrics.decode()

    # A live change of the start: the map follows the watched StatefulSet, and no key is
    # ever sent to a pod that the current start does not give it.
    cluster.backend(0)
    for backend in cluster.backends.values():
        backend.seen.clear()
    stop = threading.Event()
    during: list[tuple[str, int, dict[str, Any] | None, str | None]] = []

    def traffic() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=10)
        while not stop.is_set():
            during.extend(send(sidecar.port, keys[:30], conn))

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    cluster.apps.patch_namespaced_stateful_set(STS, cluster.namespace,
                                               {"spec": {"ordinals": {"start": 0}}})
    cluster.wait_map(lambda s: s.start == 0, "start 0 seen", timeout=10)
    cluster.wait_map(pods_from(0, 3), "pods ledger-0..2 ready")
    stop.set()
    thread.join(10)
    # Mid-change a key is answered by its owner under the old start or the new one (or
    # 503 while that pod is not ready); every pod only ever got requests named for it.
    for key, status, body, header in during:
        owners = {1 + int(key) % 3, int(key) % 3}
        assert status == 503 or (status == 200 and body and body["ordinal"] in owners
                                 and header == str(body["ordinal"])), (key, status, body)
    for ordinal, backend in cluster.backends.items():
        assert all(seen.headers["x-shard-ordinal"] == str(ordinal) for seen in backend.seen)
    for backend in cluster.backends.values():
        backend.seen.clear()
    for key, status, body, header in send(sidecar.port, keys):
        owner = int(key) % 3
        assert (status, body and body["ordinal"], header) == (200, owner, str(owner)), key
    assert check_pod_ordinals(cluster, 0, 3) == 300
    assert not cluster.backends[3].seen
