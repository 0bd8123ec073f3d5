"""Direct mode watches narrowly (SPEC §7): the StatefulSet's own pods, by its selector.

On the real control plane. The sidecar's pod events are recorded by wrapping
``RouteWatch._apply``/``_replace`` (the discovery module is not compiled), so
"not watched" means the API server never sent the pod, not that it was filtered.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from sidecar.discovery import RouteWatch
from tests.cluster.controlplane import ControlPlane
from tests.cluster.waiting import wait_for
from tests.sidecar.test_cluster import (
    STS,
    Cluster,
    all_ready,
    check_backends,
    send,
    statefulset,
)


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of every pod the sidecar's pod watches received (lists and events)."""
    names: list[str] = []
    apply, replace = RouteWatch._apply, RouteWatch._replace

    def recording_apply(self: RouteWatch, kind: str, event: str, obj: Any, valid: Any) -> None:
        if kind == "pods":
            names.append(obj["metadata"]["name"])
        apply(self, kind, event, obj, valid)

    def recording_replace(self: RouteWatch, kind: str, items: Any, valid: Any) -> None:
        if kind == "pods":
            names.extend(i["metadata"]["name"] for i in items)
        replace(self, kind, items, valid)

    monkeypatch.setattr(RouteWatch, "_apply", recording_apply)
    monkeypatch.setattr(RouteWatch, "_replace", recording_replace)
    return names


def stray_pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "example.invalid/stray:1"}]}}


def route_watch(cluster: Cluster) -> RouteWatch:
    assert cluster.sidecar is not None
    source: Any = cluster.sidecar.sidecar.source
    watch: RouteWatch = source.watches[STS]  # directory_source.Source is a KubernetesSource
    return watch


def test_only_pods_of_the_statefulsets_selector_are_watched_and_a_new_one_is_followed(
    cluster: Cluster, control_plane: ControlPlane, seen: list[str],
) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    # Looks like a StatefulSet pod (the controller's pod-name label) but is not selected.
    core.create_namespaced_pod(cluster.namespace, stray_pod(
        "lookalike-0", {"statefulset.kubernetes.io/pod-name": "lookalike-0", "app": "other"}))
    cluster.create(2)
    cluster.start_sidecar({"shard.io/backend": STS})
    cluster.wait_map(all_ready(2), "2 ready ordinals")
    assert route_watch(cluster).selector == f"app={STS}"
    core.create_namespaced_pod(cluster.namespace, stray_pod(
        "lookalike-1", {"statefulset.kubernetes.io/pod-name": "lookalike-1"}))
    wait_for(lambda: core.read_namespaced_pod("lookalike-1", cluster.namespace).status.pod_ip,
             "the lookalike's status (an event a namespace-wide watch would get)", timeout=20)
    assert cluster.sidecar is not None
    answers = send(cluster.sidecar.port, [str(i) for i in range(100)])
    assert all(status == 200 for _, status, _, _ in answers)
    assert check_backends(cluster) == 100

    # spec.selector is immutable: a new selector means the StatefulSet was recreated.
    apps = cluster.apps
    apps.delete_namespaced_stateful_set(STS, cluster.namespace,
                                        propagation_policy="Foreground")
    wait_for(lambda: not [p for p in core.list_namespaced_pod(cluster.namespace).items
                          if p.metadata.name.startswith(f"{STS}-")]
             and not apps.list_namespaced_stateful_set(cluster.namespace).items,
             "the old StatefulSet and its pods gone", timeout=60)
    renewed = statefulset(STS, 3)
    renewed["spec"]["selector"]["matchLabels"]["track"] = "v2"
    renewed["spec"]["template"]["metadata"]["labels"]["track"] = "v2"
    for ordinal in range(3):
        cluster.backend(ordinal)
    apps.create_namespaced_stateful_set(cluster.namespace, renewed)
    cluster.wait_map(all_ready(3), "3 ready ordinals of the new StatefulSet", timeout=60)
    assert route_watch(cluster).selector == f"app={STS},track=v2"
    answers = send(cluster.sidecar.port, [str(i) for i in range(100)])
    assert all(status == 200 for _, status, _, _ in answers)
    assert {body["ordinal"] for _, _, body, _ in answers if body} == {0, 1, 2}

    assert not [n for n in seen if n.startswith("lookalike")], seen
    assert set(seen) <= {f"{STS}-{i}" for i in range(3)}, seen
