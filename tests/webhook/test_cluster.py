"""The webhook against the real kube-apiserver: registration, injection of pods made by
the Deployment and StatefulSet controllers, denial, dry run, failurePolicy Ignore,
shared certificates and their rotation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client

from tests.cluster.controlplane import ControlPlane
from tests.cluster.waiting import wait_for
from tests.webhook import clusterhook, serving
from tests.webhook.clusterhook import (
    BACKEND,
    MANIFESTS,
    Registration,
    assert_injected_once,
    pod_manifest,
)
from webhook.render import TOKEN_DIR, TOKEN_VOLUME

pytestmark = pytest.mark.cluster


@dataclass
class LocalWebhook:
    api: client.ApiClient
    reg: Registration
    hook: serving.Webhook


@pytest.fixture(scope="module")
def webhook(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[LocalWebhook]:
    api = control_plane.api_client()
    port = serving.free_port()
    reg = clusterhook.register(api, port)
    tmp = tmp_path_factory.mktemp("webhook")
    # The webhook runs with the manifests' least-privilege RBAC, not as admin.
    kubeconfig = clusterhook.service_account_kubeconfig(
        api, reg, control_plane.kubeconfig, tmp / "webhook.kubeconfig")
    hook = serving.start(reg.webhook_args(kubeconfig, tmp / "certs"), tmp / "webhook.log",
                         port=port)
    clusterhook.wait_until_trusted(api, reg)
    yield LocalWebhook(api, reg, hook)
    hook.stop()
    clusterhook.unregister(api, reg)


def template(app: str) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": app}, "annotations": BACKEND},
            "spec": {"containers": [{"name": "app", "image": "example.com/client:1",
                                     "ports": [{"containerPort": 8080}]}]}}


def pods(api: client.ApiClient, namespace: str, app: str, count: int) -> list[Any]:
    core = client.CoreV1Api(api)

    def listed() -> list[Any]:
        found = core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
        return found if len(found) == count else []

    return wait_for(listed, f"{count} pods of {app} in {namespace}", timeout=60)


def test_manifests_pass_server_side_dry_run(control_plane: ControlPlane) -> None:
    # Namespaced objects need their namespace to exist even in a dry run. Applied
    # server-side, as the e2e install does, so neither conflicts with the other.
    control_plane.kubectl("apply", "--server-side", "-f",
                          str(MANIFESTS / "base" / "namespace.yaml"))
    result = control_plane.kubectl("apply", "--dry-run=server", "-k", str(MANIFESTS))
    for kind in ("deployment.apps/shardmesh-webhook", "service/shardmesh-webhook",
                 "mutatingwebhookconfiguration.admissionregistration.k8s.io/"
                 "shardmesh-sidecar-injector", "poddisruptionbudget.policy/shardmesh-webhook",
                 "clusterrole.rbac.authorization.k8s.io/shardmesh-sidecar"):
        assert f"{kind} " in result.stdout, result.stdout


def test_controller_pods_are_injected_exactly_once(webhook: LocalWebhook, namespace: str) -> None:
    clusterhook.label_namespace(webhook.api, namespace, webhook.reg, {"shard.io/inject": "true"})
    apps = client.AppsV1Api(webhook.api)
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "client"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "client"}},
                 "template": template("client")}})
    apps.create_namespaced_stateful_set(namespace, {
        "metadata": {"name": "worker"},
        "spec": {"replicas": 2, "serviceName": "worker", "podManagementPolicy": "Parallel",
                 "selector": {"matchLabels": {"app": "worker"}}, "template": template("worker")}})
    made = pods(webhook.api, namespace, "client", 2) + pods(webhook.api, namespace, "worker", 2)
    for pod in made:
        assert_injected_once(pod)
    # The decisions are posted as Events on the pods' controllers.
    core = client.CoreV1Api(webhook.api)

    def injected_events() -> set[str]:
        return {e.involved_object.kind for e in core.list_namespaced_event(namespace).items
                if e.reason == "ShardRouterInjected"}

    wait_for(lambda: injected_events() == {"ReplicaSet", "StatefulSet"},
             "ShardRouterInjected Events on the ReplicaSet and the StatefulSet", timeout=15)
    # The API server's reviews take the WSGI lane, not the slower way through Flask.
    reviews = reviews_by_way(webhook)
    assert reviews.get("lane", 0) >= 4 and reviews.get("flask", 0) == 0, reviews


def reviews_by_way(webhook: LocalWebhook) -> dict[str, float]:
    ca = clusterhook.ca_bundle(webhook.api, webhook.reg)
    return {labels["via"]: value
            for labels, value in webhook.hook.samples(ca, "shardmesh_webhook_reviews_total")}


def test_automount_off_still_gives_the_sidecar_a_token(webhook: LocalWebhook,
                                                       namespace: str) -> None:
    clusterhook.label_namespace(webhook.api, namespace, webhook.reg, {"shard.io/inject": "true"})
    core = client.CoreV1Api(webhook.api)
    core.create_namespaced_pod(namespace, pod_manifest(
        "no-token", BACKEND, automountServiceAccountToken=False))
    pod = core.read_namespaced_pod("no-token", namespace)
    assert_injected_once(pod)
    assert TOKEN_VOLUME in [v.name for v in pod.spec.volumes]
    app = pod.spec.containers[0]
    assert not any(m.mount_path == TOKEN_DIR for m in app.volume_mounts or []), \
        "only the sidecar gets the token"


@pytest.mark.parametrize(
    ("labels", "annotations"),
    [
        pytest.param({}, {"shard.io/inject": "false", **BACKEND}, id="pod-opts-out"),
        pytest.param({}, BACKEND, id="namespace-not-opted-in"),
        pytest.param({"shard.io/inject": "true", "shard.io/admission-webhooks": "disabled"},
                     {"shard.io/inject": "true", **BACKEND}, id="namespace-excluded"),
    ],
)
def test_pods_that_do_not_opt_in_are_untouched(webhook: LocalWebhook, namespace: str,
                                               labels: dict[str, str],
                                               annotations: dict[str, str]) -> None:
    clusterhook.label_namespace(webhook.api, namespace, webhook.reg, labels)
    core = client.CoreV1Api(webhook.api)
    core.create_namespaced_pod(namespace, pod_manifest("plain", annotations))
    pod = core.read_namespaced_pod("plain", namespace)
    assert not pod.spec.init_containers
    assert [c.name for c in pod.spec.containers] == ["app"]
    assert "shard.io/status" not in (pod.metadata.annotations or {})


def test_bad_annotation_is_refused_with_the_message(webhook: LocalWebhook,
                                                    control_plane: ControlPlane,
                                                    namespace: str) -> None:
    clusterhook.label_namespace(webhook.api, namespace, webhook.reg, {"shard.io/inject": "true"})
    manifest = pod_manifest("bad", {**BACKEND, "shard.io/strategy.accounts": "fastest"})
    result = control_plane.kubectl("-n", namespace, "create", "-f", "-",
                                   input=yaml.safe_dump(manifest), check=False)
    assert result.returncode != 0
    assert 'admission webhook "sidecar-injector.shard.io" denied the request' in result.stderr
    assert ("invalid value 'fastest' for annotation 'shard.io/strategy.accounts'"
            in result.stderr), result.stderr
    assert not client.CoreV1Api(webhook.api).list_namespaced_pod(namespace).items


def test_server_dry_run_shows_the_injection_and_stores_nothing(
        webhook: LocalWebhook, control_plane: ControlPlane, namespace: str) -> None:
    clusterhook.label_namespace(webhook.api, namespace, webhook.reg, {"shard.io/inject": "true"})
    result = control_plane.kubectl("-n", namespace, "create", "--dry-run=server", "-o", "json",
                                   "-f", "-", input=yaml.safe_dump(pod_manifest("dry", BACKEND)))
    shown = json.loads(result.stdout)
    assert shown["spec"]["initContainers"][0]["name"] == "shard-router"
    assert not client.CoreV1Api(webhook.api).list_namespaced_pod(namespace).items
    decisions = webhook.hook.decisions()
    assert any(d["namespace"] == namespace and d["dryRun"] is True for d in decisions)


# --- two replicas: one Secret, rotation, and failurePolicy Ignore when down ------------------


def serials(hooks: list[serving.Webhook]) -> set[int]:
    return {serving.peer_serial(h.port) for h in hooks}


def test_replicas_share_one_secret_rotate_and_fail_open(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    api = control_plane.api_client()
    ports = [serving.free_port(), serving.free_port()]
    reg = clusterhook.register(api, ports[0])
    # Short lifetimes: the serving certificate renews every few seconds and the CA
    # once, so the test sees both kinds of rotation.
    extra = ["--cert-lifetime-s", "6", "--ca-lifetime-s", "15"]
    kubeconfig = clusterhook.service_account_kubeconfig(
        api, reg, control_plane.kubeconfig, tmp_path / "webhook.kubeconfig")
    hooks = [serving.spawn(reg.webhook_args(kubeconfig, tmp_path / f"certs{i}", extra),
                           tmp_path / f"webhook{i}.log", port=port)
             for i, port in enumerate(ports)]
    try:
        for hook in hooks:
            serving.wait_ready(hook)
        logs = "".join(h.logs() for h in hooks)
        assert logs.count('"msg":"created the certificate Secret"') == 1, logs
        first = clusterhook.secret_bundle(api, reg)
        wait_for(lambda: serials(hooks) == {
            x509.load_pem_x509_certificate(clusterhook.secret_bundle(api, reg)["tls.crt"])
            .serial_number}, "both replicas serving the Secret's certificate", timeout=10)
        pids = [h.proc.pid for h in hooks]

        def ca_rotated() -> bool:
            data = clusterhook.secret_bundle(api, reg)
            cas = x509.load_pem_x509_certificates(data["ca-bundle.crt"])
            return len(cas) == 2 and data["ca.crt"] != first["ca.crt"]

        wait_for(ca_rotated, "a new CA next to the old one in the Secret", timeout=30)
        data = clusterhook.secret_bundle(api, reg)
        assert data["tls.crt"] != first["tls.crt"]
        wait_for(lambda: clusterhook.ca_bundle(api, reg) == data["ca-bundle.crt"],
                 "the rotated caBundle in the webhook configuration", timeout=10)
        assert [h.proc.pid for h in hooks] == pids and all(h.proc.poll() is None for h in hooks)
        # The API server trusts the rotated certificate: injection still works.
        clusterhook.label_namespace(api, namespace, reg, {"shard.io/inject": "true"})
        core = client.CoreV1Api(api)
        core.create_namespaced_pod(namespace, pod_manifest("after-rotation", BACKEND))
        assert_injected_once(core.read_namespaced_pod("after-rotation", namespace))
        # Both replicas serve the rotated certificate, from the same processes.
        wait_for(lambda: serials(hooks) == {
            x509.load_pem_x509_certificate(clusterhook.secret_bundle(api, reg)["tls.crt"])
            .serial_number}, "both replicas serving the rotated certificate", timeout=10)
        assert [h.proc.pid for h in hooks] == pids
        logs = "".join(h.logs() for h in hooks)
        assert '"msg":"certificate reloaded"' in logs
    finally:
        for hook in hooks:
            hook.stop()
    # Webhook down, failurePolicy Ignore: the pod is created, without the sidecar.
    started = time.monotonic()
    core.create_namespaced_pod(namespace, pod_manifest("while-down", BACKEND))
    pod = core.read_namespaced_pod("while-down", namespace)
    assert not pod.spec.init_containers and len(pod.spec.containers) == 1
    assert time.monotonic() - started < 10
    clusterhook.unregister(api, reg)


def test_widened_operations_are_allowed_not_refused(webhook: LocalWebhook,
                                                    namespace: str) -> None:
    """A user may register the webhook for more than CREATE. The API server then sends
    UPDATE and DELETE reviews (DELETE with ``object: null``); with failurePolicy Fail
    a 400 would refuse them, so they must be allowed untouched."""
    admission = client.AdmissionregistrationV1Api(webhook.api)
    config = admission.read_mutating_webhook_configuration(webhook.reg.config_name)
    original = [(h.failure_policy, [r.operations for r in h.rules]) for h in config.webhooks]
    for hook in config.webhooks:
        hook.failure_policy = "Fail"
        for rule in hook.rules:
            rule.operations = ["CREATE", "UPDATE", "DELETE"]
    admission.replace_mutating_webhook_configuration(webhook.reg.config_name, config)
    try:
        clusterhook.label_namespace(webhook.api, namespace, webhook.reg,
                                    {"shard.io/inject": "true"})
        time.sleep(1)  # the API server picks up webhook configuration changes within ~1 s
        core = client.CoreV1Api(webhook.api)
        core.create_namespaced_pod(namespace, pod_manifest("widened", BACKEND))
        core.patch_namespaced_pod("widened", namespace, {"metadata": {"labels": {"x": "y"}}})
        core.delete_namespaced_pod("widened", namespace, grace_period_seconds=0)
        skipped = [d for d in webhook.hook.decisions()
                   if d["reason"] == "not_pod_create" and d["namespace"] == namespace]
        assert len(skipped) >= 2, skipped  # the UPDATE and the DELETE reached the webhook
        assert '"status":400' not in webhook.hook.logs()
    finally:
        config = admission.read_mutating_webhook_configuration(webhook.reg.config_name)
        for hook, (policy, operations) in zip(config.webhooks, original, strict=True):
            hook.failure_policy = policy
            for rule, ops in zip(hook.rules, operations, strict=True):
                rule.operations = ops
        admission.replace_mutating_webhook_configuration(webhook.reg.config_name, config)
