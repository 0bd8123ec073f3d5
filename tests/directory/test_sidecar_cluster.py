"""Sidecars in directory mode on the real control plane (SPEC §7, issue 14 step 2).

The sidecar runs in-process with no kubeconfig at all: its maps can only come
through the directory, with a real service-account token (TokenRequest). Each
test that kills a directory starts replicas of its own (``Replica``): the
module's directory's RBAC and certificate (file mode, as cert-manager's would
be), on ports of their own, so they can be paused, killed and restarted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from sidecar.shardfn import ordinal_for
from tests.cluster.controlplane import ControlPlane
from tests.cluster.naming import namespace_name
from tests.cluster.processes import free_port
from tests.cluster.waiting import wait_for
from tests.directory.harness import REPO, DirectoryProcess, grant, token
from tests.sidecar.harness import SidecarThread, get_json, request, settings_from_args
from tests.sidecar.test_cluster import STS, Cluster, all_ready, check_backends, send

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def directory(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[DirectoryProcess]:
    api = client.CoreV1Api(control_plane.api_client())
    ns = namespace_name("dirclient-home")
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    # Right after another module's API server restart the controller-manager was seen to
    # take over 30 s to publish this (a loaded 2-core machine); the harness waits 30 s.
    wait_for(lambda: api.read_namespaced_config_map("kube-root-ca.crt", ns),
             f"ConfigMap kube-root-ca.crt in {ns}", timeout=120)
    proc = DirectoryProcess(control_plane, ns, tmp_path_factory.mktemp("directory"))
    try:
        yield proc.start()
    finally:
        proc.stop()
        api.delete_namespace(ns)


@dataclass
class Replica:
    """Another ``shardmesh directory`` with the module directory's account and certificate."""

    primary: DirectoryProcess
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, *extra: str, wait: bool = True) -> Replica:
        certs = self.primary.workdir / "certs"
        argv = [sys.executable, "-m", "shardmesh", "directory",
                "--kubeconfig", str(self.primary.workdir / "directory.kubeconfig"),
                "--injector-namespace", self.primary.namespace, "--host", "127.0.0.1",
                "--port", str(self.port), "--cert-mode", "file",
                "--cert-file", str(certs / "tls.crt"), "--key-file", str(certs / "tls.key"),
                "--heartbeat-s", "1", "--linger-s", "0", "--deny-cache-s", "0", *extra]
        log = (self.workdir / f"replica-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if wait:
            wait_for(self.healthy, f"directory replica on {self.port}", timeout=30)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2,
                                        context=self.primary.context()) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5,
                                    context=self.primary.context()) as answer:
            text = answer.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith((name + " ", name + "{")))

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


class DirectoryCluster(Cluster):
    """``tests.sidecar.test_cluster.Cluster`` with a sidecar that follows the directory."""

    def start_directory_sidecar(self, bearer: str, urls: list[str], ca: bytes,
                                annotations: dict[str, str] | None = None,
                                kubeconfig: Path | None = None) -> SidecarThread:
        from tests.sidecar.test_cluster import write_annotations

        tmp = self.annotations.parent
        (tmp / "token").write_text(bearer)
        (tmp / "ca.crt").write_bytes(ca)
        write_annotations(self.annotations, annotations or {"shard.io/backend": STS})
        settings = settings_from_args(
            ["--annotations-file", str(self.annotations), "--directory-url", ",".join(urls),
             "--directory-ca-file", str(tmp / "ca.crt"),
             "--directory-token-file", str(tmp / "token"), "--directory-heartbeat", "1",
             *(["--kubeconfig", str(kubeconfig)] if kubeconfig else [])],
            env={"POD_NAMESPACE": self.namespace, "POD_NAME": "client-0"})
        if kubeconfig is None:
            assert settings.kubeconfig is None  # no way to the API server but the directory
        self.sidecar = SidecarThread(settings).start()
        return self.sidecar

    def route(self) -> dict[str, Any]:
        assert self.sidecar is not None
        status, _, body = get_json(self.sidecar.port, "/_shard/routes")
        assert status == 200
        routes: list[dict[str, Any]] = body["routes"]
        return next(r for r in routes if r["route"] == STS)

    def metric(self, name: str) -> float | None:
        assert self.sidecar is not None
        _, _, text = request(self.sidecar.admin_port, "GET", "/metrics")
        for line in text.decode().splitlines():
            if line.startswith(f'{name}{{route="{STS}"}} '):
                return float(line.rsplit(" ", 1)[1])
        return None

    def losses(self, reason: str) -> float:
        assert self.sidecar is not None
        _, _, text = request(self.sidecar.admin_port, "GET", "/metrics")
        prefix = f'shardmesh_sidecar_directory_losses_total{{reason="{reason}"}} '
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
                   if line.startswith(prefix))

    def ready(self) -> int:
        assert self.sidecar is not None
        return request(self.sidecar.admin_port, "GET", "/readyz")[0]

    def routes_correctly(self, count: int, keys: int = 200) -> None:
        assert self.sidecar is not None
        for backend in self.backends.values():
            backend.seen.clear()
        for key, status, body, header in send(self.sidecar.port, [f"k{i}" for i in range(keys)]):
            owner = ordinal_for(key, "modulo", count)
            assert (status, body and body["ordinal"], header) == (200, owner, str(owner)), key
        assert check_backends(self) == keys




@pytest.fixture
def replicas(directory: DirectoryProcess, tmp_path: Path) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.kill()


def test_the_map_comes_through_the_directory_and_follows_a_scale(
    directory: DirectoryProcess, cluster: DirectoryCluster, reader: str,
) -> None:
    cluster.create(3)
    cluster.start_directory_sidecar(reader, [directory.url], directory.ca)
    cluster.wait_map(all_ready(3), "3 ready ordinals through the directory")
    route = cluster.route()
    assert (route["discovery"], route["stale"], route["directory"]["connected"]) == \
        ("directory", False, True)
    _, maps = directory.get(f"/v1/maps?namespace={cluster.namespace}", bearer=reader)
    assert [m["subscribers"] for m in maps["maps"]] == [1]  # the sidecar is the subscriber
    cluster.routes_correctly(3)

    generation = route["directory"]["generation"]
    cluster.scale(5)
    cluster.wait_map(all_ready(5), "5 ready ordinals after the scale", timeout=30)
    cluster.routes_correctly(5)
    assert cluster.route()["directory"]["generation"] > generation
    assert cluster.metric("shardmesh_sidecar_directory_stale") == 0.0
    assert cluster.ready() == 200


def test_a_silent_directory_leaves_the_map_stale_until_another_replica_takes_over(
    directory: DirectoryProcess, cluster: DirectoryCluster, reader: str,
    replicas: list[Replica], tmp_path: Path,
) -> None:
    first = Replica(directory, tmp_path).start()
    replicas.append(first)
    second = Replica(directory, tmp_path)  # its port is known; not running yet
    replicas.append(second)
    cluster.create(3)
    cluster.start_directory_sidecar(reader, [first.url, second.url], directory.ca)
    cluster.wait_map(all_ready(3), "3 ready ordinals through the first replica")
    source = cluster.route()["directory"]["source"]

    # Frozen mid-stream: the TCP connection stays up, only the heartbeats stop.
    first.signal(signal.SIGSTOP)
    wait_for(lambda: cluster.route()["stale"], "the route to turn stale", timeout=15)
    route = cluster.route()
    assert route["stale_since"] is not None and route["synced"] and route["count"] == 3
    assert cluster.losses("timeout") >= 1  # three heartbeats missed, no close seen
    assert cluster.metric("shardmesh_sidecar_directory_stale") == 1.0
    assert (cluster.metric("shardmesh_sidecar_directory_stale_seconds") or 0) > 0
    assert cluster.ready() == 200  # synced once: stays ready
    cluster.routes_correctly(3)  # the last map, unchanged

    second.start()
    wait_for(lambda: not cluster.route()["stale"], "the second replica to confirm the map",
             timeout=30)
    route = cluster.route()
    assert route["directory"]["url"] == second.url and route["directory"]["source"] != source
    cluster.scale(4)
    cluster.wait_map(all_ready(4), "the scale, through the second replica", timeout=30)
    cluster.routes_correctly(4)


def test_a_killed_directory_is_reconnected_to_and_resumed_from(
    directory: DirectoryProcess, cluster: DirectoryCluster, reader: str,
    replicas: list[Replica], tmp_path: Path,
) -> None:
    only = Replica(directory, tmp_path).start()
    replicas.append(only)
    cluster.create(2)
    cluster.start_directory_sidecar(reader, [only.url], directory.ca)
    cluster.wait_map(all_ready(2), "2 ready ordinals")
    only.kill()
    wait_for(lambda: cluster.route()["stale"], "stale after the kill", timeout=10)
    cluster.scale(3)  # a change the sidecar cannot see while no directory runs
    cluster.routes_correctly(2)
    assert cluster.state().count == 2  # type: ignore[union-attr]  # nothing invented
    again = Replica(directory, tmp_path, port=only.port).start()  # the same Service address
    replicas.append(again)
    cluster.wait_map(all_ready(3), "the scale after the restart", timeout=30)
    assert not cluster.route()["stale"]
    cluster.routes_correctly(3)


def test_a_reconnect_to_the_same_replica_resumes_without_a_snapshot(
    directory: DirectoryProcess, cluster: DirectoryCluster, reader: str,
    replicas: list[Replica], tmp_path: Path,
) -> None:
    # The map outlives its last subscriber (the default): with --linger-s 0 the reconnect
    # would start a new informer, whose map is a new generation.
    only = Replica(directory, tmp_path).start("--linger-s", "30")
    replicas.append(only)
    cluster.create(2)
    cluster.start_directory_sidecar(reader, [only.url], directory.ca)
    cluster.wait_map(all_ready(2), "2 ready ordinals")
    time.sleep(2)  # let the pods' last status writes settle before noting the generation
    held = cluster.route()["directory"]
    sent = only.metric("shardmesh_directory_snapshots_sent_total")
    assert sent >= 1
    map_generation = cluster.sidecar.call(lambda: cluster.sidecar.sidecar.map.generation)  # type: ignore[union-attr]

    only.signal(signal.SIGSTOP)
    wait_for(lambda: cluster.route()["stale"], "stale while the replica is frozen", timeout=15)
    only.signal(signal.SIGCONT)
    wait_for(lambda: not cluster.route()["stale"], "confirmed by the same replica", timeout=30)
    again = cluster.route()["directory"]
    assert (again["source"], again["generation"]) == (held["source"], held["generation"])
    assert cluster.losses("timeout") >= 1
    # Resumed at its (source, generation): a heartbeat confirmed the map, no snapshot came.
    assert only.metric("shardmesh_directory_snapshots_sent_total") == sent
    assert cluster.sidecar.call(lambda: cluster.sidecar.sidecar.map.generation) == \
        map_generation  # type: ignore[union-attr]
    cluster.routes_correctly(2)


def test_slot_mode_through_the_directory_keeps_the_last_good_map(
    directory: DirectoryProcess, cluster: DirectoryCluster, reader: str,
) -> None:
    from sidecar.shardfn import ordinal_for as slot_of

    cluster.create(2)
    good = {"shard.io/slots": "8", "shard.io/epoch": "3", "shard.io/assignment": "0-5:1,6-7:0"}
    cluster.apps.patch_namespaced_stateful_set(STS, cluster.namespace,
                                               {"metadata": {"annotations": good}})
    cluster.start_directory_sidecar(reader, [directory.url], directory.ca)
    wait_for(lambda: cluster.route().get("epoch") == 3 and cluster.route()["synced"]
             and all(s["ready"] for s in cluster.route()["shards"]), "the slot map at epoch 3",
             timeout=30)
    keys = [f"k{i}" for i in range(64)]
    for key, status, _, header in send(cluster.sidecar.port, keys):  # type: ignore[union-attr]
        owner = 1 if slot_of(key, "modulo", 8) <= 5 else 0  # not modulo 2: slots decide
        assert (status, header) == (200, str(owner)), key
    seen = [r for b in cluster.backends.values() for r in b.seen]
    assert len(seen) == len(keys) and all(r.headers["x-shard-epoch"] == "3" for r in seen)

    # Back to epoch 2: the directory and then the sidecar keep epoch 3, and say why.
    cluster.apps.patch_namespaced_stateful_set(STS, cluster.namespace, {"metadata": {
        "annotations": {**good, "shard.io/epoch": "2", "shard.io/assignment": "0-7:0"}}})
    wait_for(lambda: "went back from 3 to 2" in (
        directory.get(f"/v1/maps?namespace={cluster.namespace}", bearer=reader)[1]["maps"][0]
        ["map"]["slot_problem"] or ""), "the directory to refuse epoch 2", timeout=30)
    time.sleep(1.5)  # a snapshot, had one been sent, has arrived
    route = cluster.route()
    assert route["epoch"] == 3 and route["assignment"] is not None, route
    for key, status, _, header in send(cluster.sidecar.port, keys[:16]):  # type: ignore[union-attr]
        assert (status, header) == (200, "1" if slot_of(key, "modulo", 8) <= 5 else "0"), key


def test_an_unauthorised_account_gets_no_map_and_is_told_why(
    directory: DirectoryProcess, cluster: DirectoryCluster, control_plane: ControlPlane,
) -> None:
    cluster.create(2)
    # Another namespace's service account, with the old direct-watch rights in its own.
    other = namespace_name("dirclient-stranger")
    api = control_plane.api_client()
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        grant(api, other, "stranger")
        cluster.start_directory_sidecar(token(api, other, "stranger"), [directory.url],
                                        directory.ca)
        wait_for(lambda: "403" in (cluster.route()["problem"] or ""), "the refusal", timeout=15)
        route = cluster.route()
        assert not route["synced"] and route["count"] == 0
        assert f"watch shardmaps.shard.io '{STS}' in namespace '{cluster.namespace}'" \
            in route["problem"]
        status, _, body = get_json(cluster.sidecar.port, f"/{STS}/x",  # type: ignore[union-attr]
                                   headers={"X-Shard-Key": "1"})
        assert (status, body["error"]) == (503, "shard_map_not_ready")
        assert cluster.ready() == 503
        assert all(not b.seen for b in cluster.backends.values())
    finally:
        core.delete_namespace(other)


def test_rights_in_one_namespace_give_no_map_of_another(
    directory: DirectoryProcess, cluster: DirectoryCluster, control_plane: ControlPlane,
    reader: str,
) -> None:
    other = namespace_name("dirclient-other")
    core = client.CoreV1Api(control_plane.api_client())
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        cluster.kubelet.watch(other)
        from tests.sidecar.test_cluster import statefulset

        cluster.apps.create_namespaced_stateful_set(other, statefulset(STS, 2))
        cluster.start_directory_sidecar(reader, [directory.url], directory.ca,
                                        {"shard.io/backend": f"{STS}.{other}"})
        wait_for(lambda: "403" in (cluster.route()["problem"] or ""), "the refusal",
                 timeout=15)
        route = cluster.route()
        assert not route["synced"] and f"in namespace '{other}'" in route["problem"]
    finally:
        core.delete_namespace(other)


def test_a_route_can_opt_out_and_back_in_without_losing_its_map(
    directory: DirectoryProcess, cluster: DirectoryCluster, reader: str,
    control_plane: ControlPlane,
) -> None:
    from tests.sidecar.test_cluster import write_annotations

    cluster.create(2)
    cluster.start_directory_sidecar(reader, [directory.url], directory.ca,
                                    {"shard.io/backend": STS, "shard.io/discovery": "direct"},
                                    kubeconfig=control_plane.kubeconfig)
    cluster.wait_map(all_ready(2), "2 ready ordinals from the sidecar's own watches")
    assert "stale" not in cluster.route()  # direct routes look as they always did
    _, maps = directory.get(f"/v1/maps?namespace={cluster.namespace}", bearer=reader)
    assert maps["maps"] == []

    write_annotations(cluster.annotations, {"shard.io/backend": STS,
                                            f"shard.io/discovery.{STS}": "directory"})
    wait_for(lambda: cluster.route().get("discovery") == "directory"
             and cluster.route()["directory"]["connected"], "the switch to the directory",
             timeout=15)
    assert cluster.route()["synced"]
    _, maps = directory.get(f"/v1/maps?namespace={cluster.namespace}", bearer=reader)
    assert [m["subscribers"] for m in maps["maps"]] == [1]
    cluster.routes_correctly(2)


# Last in the module: the controller-manager lags for a while after the API server is back.
def test_a_directory_restarted_while_the_api_server_is_down_keeps_the_last_map(
    directory: DirectoryProcess, cluster: DirectoryCluster, reader: str,
    replicas: list[Replica], tmp_path: Path, control_plane: ControlPlane,
) -> None:
    only = Replica(directory, tmp_path).start()
    replicas.append(only)
    cluster.create(3)
    cluster.start_directory_sidecar(reader, [only.url], directory.ca)
    cluster.wait_map(all_ready(3), "3 ready ordinals")
    apiserver = control_plane._apiserver
    assert apiserver is not None
    apiserver.stop(grace=1.0)
    try:
        only.kill()
        again = Replica(directory, tmp_path, port=only.port).start(wait=False)
        replicas.append(again)
        wait_for(lambda: cluster.route()["stale"], "stale while the API server is down",
                 timeout=15)
        wait_for(again.healthy, "the restarted directory", timeout=30)
        wait_for(lambda: cluster.losses("http_503") >= 1,
                 "the restarted directory to refuse (it cannot review the token)", timeout=30)
        route = cluster.route()
        assert route["stale"] and route["synced"] and route["count"] == 3
        assert cluster.ready() == 200
        cluster.routes_correctly(3)
    finally:
        control_plane._apiserver = control_plane._spawn("kube-apiserver",
                                                        control_plane._apiserver_argv())
        control_plane._wait_ready(control_plane._apiserver, "/readyz")
    wait_for(lambda: not cluster.route()["stale"], "the map confirmed after the API returns",
             timeout=60)
    cluster.routes_correctly(3)
    controllers_caught_up(control_plane)


def controllers_caught_up(control_plane: ControlPlane) -> None:
    """Leave the control plane as found: the controller-manager's watches back (it was
    seen to take tens of seconds), so later tests' namespaces get their ConfigMaps."""
    core = client.CoreV1Api(control_plane.api_client())
    probe = namespace_name("dirclient-probe")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=probe)))
    try:
        wait_for(lambda: core.read_namespaced_config_map("kube-root-ca.crt", probe),
                 "the controller-manager after the API server's return", timeout=120)
    finally:
        core.delete_namespace(probe)
