"""Proof that the test control plane is the real thing.

The StatefulSet controller of kube-controller-manager creates, orders and
removes the pods; the simulated kubelet only reports them Running/Ready.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import ControlPlane
from tests.cluster.kubelet import Kubelet, raw_json
from tests.cluster.podevents import PodEvents
from tests.cluster.podstatus import is_ready
from tests.cluster.waiting import wait_for

STS = "web"
HOLD_SECONDS = 2.0  # long enough for the controller to act (it reacts in milliseconds)


def pod_names(count: int) -> set[str]:
    return {f"{STS}-{i}" for i in range(count)}


def headless_service(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"clusterIP": "None", "selector": {"app": name},
                     "ports": [{"name": "http", "port": 8080}]}}


def statefulset(name: str, replicas: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "serviceName": name,
            "replicas": replicas,
            "podManagementPolicy": "OrderedReady",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1",
                                         "ports": [{"containerPort": 8080}]}]},
            },
        },
    }


@pytest.fixture
def core(control_plane: ControlPlane) -> client.CoreV1Api:
    return client.CoreV1Api(control_plane.api_client())


@pytest.fixture
def events(control_plane: ControlPlane, namespace: str) -> Iterator[PodEvents]:
    recorder = PodEvents(control_plane, namespace).start()
    yield recorder
    recorder.stop()


def is_ready_model(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def wait_exactly_ready(core: client.CoreV1Api, namespace: str, names: set[str]
                       ) -> dict[str, client.V1Pod]:
    def probe() -> dict[str, client.V1Pod] | None:
        pods = {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}
        ready = {name: p for name, p in pods.items() if is_ready_model(p)}
        return ready if set(pods) == names and set(ready) == names else None

    return wait_for(probe, f"exactly pods {sorted(names)} in {namespace}, all Ready", timeout=60)


def assert_created_after_predecessor_ready(events: PodEvents, ordinals: range) -> None:
    for i in ordinals:
        created = events.first("ADDED", f"{STS}-{i}")
        predecessor_ready = events.first_ready(f"{STS}-{i - 1}")
        assert created >= 0, f"no ADDED event for {STS}-{i}: {events.events}"
        assert 0 <= predecessor_ready < created, (
            f"{STS}-{i} was created (event #{created}) before {STS}-{i - 1} was Ready "
            f"(event #{predecessor_ready}): {events.events}")


def scale(apps: client.AppsV1Api, namespace: str, replicas: int) -> None:
    apps.patch_namespaced_stateful_set_scale(STS, namespace, {"spec": {"replicas": replicas}})


def test_statefulset_controller_orders_pods_and_scales(
    control_plane: ControlPlane, namespace: str, kubelet: Kubelet, events: PodEvents,
    core: client.CoreV1Api,
) -> None:
    apps = client.AppsV1Api(control_plane.api_client())
    kubelet.set_ready(namespace, f"{STS}-0", False)  # hold -0 back: OrderedReady must wait
    kubelet.watch(namespace)
    core.create_namespaced_service(namespace, headless_service(STS))
    apps.create_namespaced_stateful_set(namespace, statefulset(STS, 3))

    wait_for(lambda: core.read_namespaced_pod_status(f"{STS}-0", namespace).status.phase
             == "Running", f"{STS}-0 Running (not Ready)", timeout=60)
    time.sleep(HOLD_SECONDS)
    assert {p.metadata.name for p in core.list_namespaced_pod(namespace).items} == {f"{STS}-0"}

    kubelet.set_ready(namespace, f"{STS}-0", True)
    pods = wait_exactly_ready(core, namespace, pod_names(3))
    assert_created_after_predecessor_ready(events, range(1, 3))
    for name, pod in pods.items():
        assert pod.status.pod_ip == kubelet.ip_for(namespace, name)
        assert pod.spec.node_name is None

    scale(apps, namespace, 5)
    wait_exactly_ready(core, namespace, pod_names(5))
    assert_created_after_predecessor_ready(events, range(3, 5))

    scale(apps, namespace, 2)
    wait_exactly_ready(core, namespace, pod_names(2))
    deletions = [e.name for e in events.events if e.kind == "DELETED"]
    assert deletions == [f"{STS}-4", f"{STS}-3", f"{STS}-2"], "highest ordinal goes first"
    wait_for(lambda: apps.read_namespaced_stateful_set_status(STS, namespace)
             .status.ready_replicas == 2, "StatefulSet status readyReplicas == 2", timeout=60)


def simple_pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}}


def wait_pod_ready(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod:
    def probe() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if is_ready_model(pod) else None

    return wait_for(probe, f"pod {namespace}/{name} Ready", timeout=60)


def test_pod_gets_a_loopback_ip_that_a_server_can_bind(
    namespace: str, kubelet: Kubelet, core: client.CoreV1Api,
) -> None:
    kubelet.watch(namespace)
    core.create_namespaced_pod(namespace, simple_pod("solo"))
    pod = wait_pod_ready(core, namespace, "solo")
    ip = pod.status.pod_ip
    assert ip == kubelet.ip_for(namespace, "solo") and ip.startswith("127.") and ip != "127.0.0.1"
    assert [i.ip for i in pod.status.pod_ips] == [ip]
    with socket.create_server((ip, 0)) as server, \
            socket.create_connection(server.getsockname(), timeout=5) as conn:
        accepted, _ = server.accept()
        with accepted:
            conn.sendall(b"ping")
            assert accepted.recv(4) == b"ping"


def test_pod_with_init_container_and_native_sidecar_is_accepted(
    namespace: str, kubelet: Kubelet, core: client.CoreV1Api,
) -> None:
    body = simple_pod("with-init")
    body["spec"]["initContainers"] = [
        {"name": "setup", "image": "example.invalid/setup:1"},
        {"name": "router", "image": "example.invalid/router:1", "restartPolicy": "Always"},
    ]
    kubelet.watch(namespace)
    core.create_namespaced_pod(namespace, body)
    pod = wait_pod_ready(core, namespace, "with-init")
    states = {s.name: s for s in pod.status.init_container_statuses}
    assert states["setup"].state.terminated.exit_code == 0
    assert states["router"].ready and states["router"].state.running is not None


def test_set_ready_flips_readiness_and_it_stays(
    namespace: str, kubelet: Kubelet, core: client.CoreV1Api,
) -> None:
    kubelet.watch(namespace)
    core.create_namespaced_pod(namespace, simple_pod("flip"))
    wait_pod_ready(core, namespace, "flip")

    kubelet.set_ready(namespace, "flip", False)
    pod = core.read_namespaced_pod("flip", namespace).to_dict()
    assert not any(c["type"] == "Ready" and c["status"] == "True"
                   for c in pod["status"]["conditions"])
    # Any other change makes the watcher look again; it must keep the override.
    core.patch_namespaced_pod("flip", namespace, {"metadata": {"labels": {"poke": "1"}}})
    time.sleep(HOLD_SECONDS)
    assert not is_ready(raw_json(core.read_namespaced_pod("flip", namespace,
                                                          _preload_content=False)))

    kubelet.set_ready(namespace, "flip", True)
    wait_pod_ready(core, namespace, "flip")


def test_pod_without_node_is_deleted_at_once(
    namespace: str, kubelet: Kubelet, core: client.CoreV1Api,
) -> None:
    kubelet.watch(namespace)
    core.create_namespaced_pod(namespace, simple_pod("gone"))
    wait_pod_ready(core, namespace, "gone")
    core.delete_namespaced_pod("gone", namespace)
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod("gone", namespace)
    assert err.value.status == 404


def test_cluster_answers_after_apiserver_restart(
    control_plane: ControlPlane, namespace: str, kubelet: Kubelet,
) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    kubelet.watch(namespace)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "kept"},
                                                  "data": {"k": "v"}})
    control_plane.restart_apiserver()

    fresh = client.CoreV1Api(control_plane.api_client())
    assert fresh.read_namespaced_config_map("kept", namespace).data == {"k": "v"}
    # The kubelet's watch reconnects by itself, and the controllers are still there.
    fresh.create_namespaced_pod(namespace, simple_pod("after-restart"))
    pod = wait_pod_ready(fresh, namespace, "after-restart")
    assert pod.status.pod_ip == kubelet.ip_for(namespace, "after-restart")


MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: dry, namespace: NS}
spec:
  selector: {matchLabels: {app: dry}}
  template:
    metadata: {labels: {app: dry}}
    spec: {containers: [{name: app, image: example.invalid/app:1}]}
"""


@pytest.mark.parametrize(("edit", "ok", "expect"), [
    pytest.param(lambda m: m, True, "deployment.apps/dry created (server dry run)", id="valid"),
    pytest.param(lambda m: m.replace("app: dry}}\n  template", "app: other}}\n  template"),
                 False, "selector", id="selector-mismatch"),
])
def test_kubectl_server_side_dry_run(
    control_plane: ControlPlane, namespace: str, edit: Any, ok: bool, expect: str,
) -> None:
    manifest = edit(MANIFEST.replace("NS", namespace))
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-",
                                   input=manifest, check=False)
    assert (result.returncode == 0) is ok, result.stderr
    assert expect in (result.stdout + result.stderr)
    # A dry run persists nothing.
    assert control_plane.kubectl("get", "deployments", "-n", namespace, "-o", "name").stdout == ""
