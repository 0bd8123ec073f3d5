"""The webhook registered as shipped, by ``clientConfig.service``, on the real kube-apiserver:
the API server calls it through its Service, and ``shardmesh check`` finds it healthy.

tests/webhook/servicehook.py says how it runs behind a Service without a kubelet.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import NoReturn

import pytest
from kubernetes import client

from shardmesh.check_cluster import Cluster
from shardmesh.check_webhook import webhook_targets
from tests.check.cli_run import check, only
from tests.cluster import netns
from tests.cluster.controlplane import ControlPlane
from tests.webhook import clusterhook, servicehook
from tests.webhook.clusterhook import BACKEND, assert_injected_once, pod_manifest
from tests.webhook.servicehook import ServiceWebhook

pytestmark = pytest.mark.cluster


def no_network_namespace(why: str) -> NoReturn:
    """Skip, as cluster tests do without their binaries; under CI, fail."""
    message = f"the webhook's pod IP needs a network namespace: {why}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def behind_service(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[ServiceWebhook]:
    why = netns.missing()
    if why:
        no_network_namespace(why)
    with contextlib.ExitStack() as stack:
        try:
            hook = stack.enter_context(servicehook.webhook_behind_service(
                control_plane, tmp_path_factory.mktemp("service-webhook")))
        except netns.NetnsError as err:  # e.g. root in a container without CAP_NET_ADMIN
            no_network_namespace(str(err))
        yield hook


def test_api_server_calls_the_webhook_through_its_service(behind_service: ServiceWebhook,
                                                          control_plane: ControlPlane,
                                                          namespace: str) -> None:
    api, reg = behind_service.api, behind_service.reg
    clusterhook.label_namespace(api, namespace, reg, {"shard.io/inject": "true"})
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, pod_manifest("via-service", BACKEND))
    pod = core.read_namespaced_pod("via-service", namespace)
    assert pod.spec.init_containers, servicehook.failed_calls(control_plane)
    assert_injected_once(pod)
    # Both calls reached the webhook in the network namespace: the injection, then the
    # reinvocation (IfNeeded) after the ServiceAccount plugin mounted the sidecar's token.
    assert [(d["pod"], d["result"], d["reason"]) for d in behind_service.hook.decisions()
            if d["namespace"] == namespace] == [("via-service", "injected", "injected"),
                                                ("via-service", "skipped", "already_injected")]


def test_check_finds_the_service_webhook_healthy(behind_service: ServiceWebhook,
                                                 control_plane: ControlPlane, namespace: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    reg, name = behind_service.reg, behind_service.service["metadata"]["name"]
    code, findings = check(control_plane, capsys, "--webhook-config", reg.config_name,
                           "--namespace", namespace, "--injector-namespace",
                           reg.injector_namespace)
    where = (f"webhook 'sidecar-injector.shard.io' of MutatingWebhookConfiguration "
             f"'{reg.config_name}'")
    service = f"Service {reg.injector_namespace}/{name}"
    assert code == 0, findings
    assert only(findings, "webhook") == {"status": "OK", "check": "webhook", "hints": [],
        "message": f"{where}: {service} port 443 answered /healthz through the API server"}
    assert only(findings, "endpoints")["message"] == f"{where}: {service} has 1 ready endpoint(s)"
    assert only(findings, "ca-bundle")["status"] == "OK"
    assert not [f for f in findings if f["check"] == "serving-cert" or f["status"] != "OK"]
    # What the webhook finding rests on: the webhook's own answer, through the proxy.
    cluster = Cluster(behind_service.api)
    [target] = webhook_targets(cluster.webhook_config(reg.config_name) or {})
    assert target.service is not None
    probe = cluster.service_probe(target.service, timeout=10)
    assert (probe.found, probe.ready_endpoints) == (True, 1)
    assert (probe.proxy.status, probe.proxy.body, probe.proxy.error) == (200, "ok", "")
