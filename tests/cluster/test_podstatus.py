"""The simulated kubelet's decisions, without a cluster."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tests.cluster.naming import namespace_name
from tests.cluster.podstatus import (
    IpAllocator,
    candidate_ips,
    is_ready,
    needs_update,
    running_status_patch,
)

NOW = "2026-01-01T00:00:00Z"


def pod(status: dict[str, Any] | None = None, deleting: bool = False,
        init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web-0", "namespace": "ns"}
    if deleting:
        meta["deletionTimestamp"] = NOW
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "app:1"}]}
    if init:
        spec["initContainers"] = init
    return {"metadata": meta, "spec": spec, "status": status or {"phase": "Pending"}}


def test_ips_are_loopback_but_never_the_hosts_own() -> None:
    allocator = IpAllocator()
    ips = [allocator.ip_for("ns", f"web-{i}") for i in range(500)]
    assert len(set(ips)) == len(ips)
    for ip in ips:
        addr = ipaddress.ip_address(ip)
        assert addr.is_loopback, ip
        assert not ip.startswith("127.0."), ip
        assert not ip.endswith((".0", ".255")), ip


def test_ip_is_stable_per_pod_name_across_allocators() -> None:
    assert IpAllocator().ip_for("ns", "web-3") == IpAllocator().ip_for("ns", "web-3")
    assert IpAllocator().ip_for("ns", "web-3") != IpAllocator().ip_for("other", "web-3")


def test_allocator_skips_an_ip_already_taken() -> None:
    allocator = IpAllocator()
    first = next(candidate_ips("ns", "a"))
    allocator._taken.add(first)  # as if another pod's hash had landed there first
    assert allocator.ip_for("ns", "a") != first


@pytest.mark.parametrize("ready", [pytest.param(True, id="ready"),
                                   pytest.param(False, id="not-ready")])
def test_patch_makes_a_pending_pod_running(ready: bool) -> None:
    patched = {**pod(), "status": running_status_patch(pod(), "127.1.2.3", ready, NOW)["status"]}
    assert patched["status"]["phase"] == "Running"
    assert patched["status"]["podIPs"] == [{"ip": "127.1.2.3"}]
    assert is_ready(patched) is ready
    assert patched["status"]["containerStatuses"][0]["ready"] is ready
    assert not needs_update(patched, "127.1.2.3", ready)
    assert needs_update(patched, "127.1.2.3", not ready)


@pytest.mark.parametrize("subject", [
    pytest.param(pod(deleting=True), id="being-deleted"),
    pytest.param(pod({"phase": "Succeeded"}), id="succeeded"),
    pytest.param(pod({"phase": "Failed"}), id="failed"),
])
def test_pods_that_are_gone_or_done_are_left_alone(subject: dict[str, Any]) -> None:
    assert not needs_update(subject, "127.1.2.3", True)


def test_unchanged_condition_keeps_its_transition_time() -> None:
    first = {**pod(), **running_status_patch(pod(), "127.1.2.3", True, NOW)}
    again = running_status_patch(first, "127.1.2.3", False, "2026-01-02T00:00:00Z")["status"]
    times = {c["type"]: c["lastTransitionTime"] for c in again["conditions"]}
    assert times["PodScheduled"] == NOW
    assert times["Ready"] == "2026-01-02T00:00:00Z"


def test_native_sidecar_runs_and_plain_init_container_completed() -> None:
    subject = pod(init=[{"name": "setup", "image": "i"},
                        {"name": "router", "image": "r", "restartPolicy": "Always"}])
    statuses = running_status_patch(subject, "127.1.2.3", True, NOW)["status"]
    setup, router = statuses["initContainerStatuses"]
    assert setup["state"]["terminated"]["exitCode"] == 0
    assert router["ready"] is True and "running" in router["state"]


@pytest.mark.parametrize("test_name", [
    pytest.param("test_scale[up-5]", id="brackets"),
    pytest.param("x" * 200, id="long"),
    pytest.param("___", id="no-letters"),
])
def test_namespace_names_are_dns_labels(test_name: str) -> None:
    name = namespace_name(test_name)
    assert len(name) <= 63
    assert name[0].isalpha() and name[-1].isalnum()
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-"), name
