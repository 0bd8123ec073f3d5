"""``shardmesh check`` against the real kube-apiserver of tests/cluster.

Every webhook configuration registered here is inert (its objectSelector
matches no pod, its namespaceSelector only the test's namespace), so nothing
else running on the control plane is intercepted. Checks 3 and 4 are limited
with ``--namespace`` to the test's own namespaces.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from shardmesh.check import main
from tests.check.cli_run import check, only
from tests.check.tls import DAY, b64, closed_port, healthz_server, make_ca, make_leaf, now
from tests.cluster.waiting import wait_for

pytestmark = pytest.mark.cluster

Register = Callable[..., str]
MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def manifest(path: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((MANIFESTS / path).read_text())
    return loaded


def inert_webhook(name: str, namespace: str, client_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "inject.shard.io", "clientConfig": client_config,
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"]}],
            "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Ignore",
            "timeoutSeconds": 2,
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "objectSelector": {"matchLabels": {"shardmesh.test/never": "true"}},
        }],
    }


@pytest.fixture
def register(control_plane: Any, namespace: str) -> Iterator[Register]:
    """Register an inert MutatingWebhookConfiguration named after the test's namespace."""
    api = client.AdmissionregistrationV1Api(control_plane.api_client())
    names: list[str] = []

    def create(**client_config: Any) -> str:
        name = f"check-{namespace}"
        api.create_mutating_webhook_configuration(inert_webhook(name, namespace, client_config))
        names.append(name)
        return name

    yield create
    for name in names:
        api.delete_mutating_webhook_configuration(name)


def test_missing_webhook_configuration(control_plane: Any, namespace: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, findings = check(control_plane, capsys, "--webhook-config", f"absent-{namespace}",
                           "--namespace", namespace)
    assert code == 1
    finding = only(findings, "webhook")
    assert finding["status"] == "FAIL"
    assert f"MutatingWebhookConfiguration 'absent-{namespace}' not found" in finding["message"]


def test_unreachable_url_webhook(control_plane: Any, namespace: str, register: Register,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    url = f"https://127.0.0.1:{closed_port()}/mutate"
    name = register(url=url, caBundle=b64(make_ca().pem))
    code, findings = check(control_plane, capsys, "--webhook-config", name,
                           "--namespace", namespace)
    assert code == 1
    reach = only(findings, "webhook")
    assert reach["status"] == "FAIL"
    assert f"{url} is unreachable" in reach["message"] and "connection refused" in reach["message"]
    assert only(findings, "ca-bundle")["status"] == "OK"


@pytest.mark.parametrize(("bundle", "status", "needle"), [
    pytest.param(lambda: b64(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                             b"-----END CERTIFICATE-----\n"),
                 "FAIL", "does not parse as PEM", id="garbage"),
    pytest.param(lambda: b64(make_ca(not_before=now() - 400 * DAY,
                                     not_after=now() - 3 * DAY).pem),
                 "FAIL", "expired on", id="expired"),
    pytest.param(lambda: b64(make_ca(not_after=now() + 5 * DAY).pem),
                 "WARN", "under --expiry-warn-days=30", id="expires-in-5-days"),
])
def test_ca_bundle_verdicts(control_plane: Any, namespace: str, register: Register,
                            capsys: pytest.CaptureFixture[str], bundle: Callable[[], str],
                            status: str, needle: str) -> None:
    name = register(url=f"https://127.0.0.1:{closed_port()}/mutate", caBundle=bundle())
    code, findings = check(control_plane, capsys, "--webhook-config", name,
                           "--namespace", namespace)
    finding = only(findings, "ca-bundle")
    assert finding["status"] == status and needle in finding["message"]
    assert "webhook 'inject.shard.io'" in finding["message"] and name in finding["message"]
    assert code == 1  # the closed port FAILs in every case


def test_near_expiry_alone_is_a_warning_not_a_failure(
    control_plane: Any, namespace: str, register: Register, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = make_ca(not_after=now() + 5 * DAY)
    with healthz_server(make_leaf(ca, not_after=now() + 4 * DAY)) as url:
        name = register(url=url, caBundle=b64(ca.pem))
        code, findings = check(control_plane, capsys, "--webhook-config", name,
                               "--namespace", namespace)
    assert code == 0, findings
    assert {f["check"]: f["status"] for f in findings if f["check"] != "sidecar"} == {
        "webhook": "OK", "ca-bundle": "WARN", "serving-cert": "WARN"}


def test_serving_cert_from_another_ca(control_plane: Any, namespace: str, register: Register,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    trusted, other = make_ca("trusted-ca"), make_ca("impostor-ca")
    with healthz_server(make_leaf(other)) as url:
        name = register(url=url, caBundle=b64(trusted.pem))
        code, findings = check(control_plane, capsys, "--webhook-config", name,
                               "--namespace", namespace)
    assert code == 1
    assert only(findings, "webhook")["status"] == "OK"
    cert = only(findings, "serving-cert")
    assert cert["status"] == "FAIL"
    assert "CN=impostor-ca" in cert["message"] and "[CN=trusted-ca]" in cert["message"]


def test_all_ok_through_text_cli_and_subprocess(
    control_plane: Any, namespace: str, register: Register, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = make_ca()
    with healthz_server(make_leaf(ca)) as url:
        name = register(url=url, caBundle=b64(ca.pem))
        args = ["--webhook-config", name, "--namespace", namespace,
                "--kubeconfig", str(control_plane.kubeconfig)]
        code = main(args)
        text = capsys.readouterr().out
        # The installed entry point, as a user runs it.
        proc = subprocess.run([sys.executable, "-m", "shardmesh", "check", *args],
                              capture_output=True, text=True, timeout=60, check=False)
    assert code == 0, text
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = text.splitlines()
    assert [line.split()[:2] for line in lines[:4]] == [
        ["OK", "webhook"], ["OK", "ca-bundle"], ["OK", "serving-cert"], ["OK", "sidecar"]]
    assert f"at {url}: GET " in lines[0]
    assert lines[-1] == "shardmesh check: 4 OK, 0 WARN, 0 FAIL -> OK"
    assert proc.stdout.splitlines()[-1] == lines[-1]


def test_service_webhook_without_endpoints(control_plane: Any, namespace: str,
                                           register: Register,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    name = register(service={"namespace": namespace, "name": "hook", "port": 443},
                    caBundle=b64(make_ca().pem))
    code, findings = check(control_plane, capsys, "--webhook-config", name,
                           "--namespace", namespace)
    assert code == 1
    assert f"Service {namespace}/hook not found" in only(findings, "webhook")["message"]

    # A Service with no selector and so no endpoints: the proxy has nowhere to go.
    core.create_namespaced_service(namespace, {"metadata": {"name": "hook"},
                                               "spec": {"ports": [{"port": 443}]}})
    code, findings = check(control_plane, capsys, "--webhook-config", name,
                           "--namespace", namespace)
    assert code == 1
    assert only(findings, "endpoints")["status"] == "FAIL"
    assert "no ready endpoints" in only(findings, "endpoints")["message"]
    reach = only(findings, "webhook")
    assert reach["status"] == "FAIL"
    proxy = f"/api/v1/namespaces/{namespace}/services/https:hook:443/proxy/healthz"
    assert proxy in reach["message"]


def test_the_shipped_configuration_before_the_webhook_runs(
    control_plane: Any, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """manifests/ as applied, before the webhook patched caBundle and with no Service yet."""
    api = client.AdmissionregistrationV1Api(control_plane.api_client())
    shipped = manifest("base/mutatingwebhookconfiguration.yaml")
    name = f"shipped-{namespace}"
    shipped["metadata"]["name"] = name
    for hook in shipped["webhooks"]:  # inert: intercepts nothing while the suite runs
        hook["objectSelector"] = {"matchLabels": {"shardmesh.test/never": "true"}}
    api.create_mutating_webhook_configuration(shipped)
    try:
        code, findings = check(control_plane, capsys, "--webhook-config", name,
                               "--namespace", namespace)
    finally:
        api.delete_mutating_webhook_configuration(name)
    assert code == 1
    hook_name = shipped["webhooks"][0]["name"]
    service = shipped["webhooks"][0]["clientConfig"]["service"]
    reach = only(findings, "webhook")
    assert f"webhook '{hook_name}' of MutatingWebhookConfiguration '{name}'" in reach["message"]
    assert f"Service {service['namespace']}/{service['name']} not found" in reach["message"]
    assert "caBundle is empty" in only(findings, "ca-bundle")["message"]


def _label_opted_in(control_plane: Any, namespace: str) -> None:
    control_plane.kubectl("label", "namespace", namespace, "shard.io/inject=true")


def test_missing_rbac_then_the_suggested_rolebinding_fixes_it(
    control_plane: Any, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    api = control_plane.api_client()
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    role = f"sidecar-{namespace}"  # the role is cluster-wide: a name of this test's own
    _label_opted_in(control_plane, namespace)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "client"}})
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "app", "annotations": {"shard.io/backend": "store:8080"}},
        "spec": {"serviceAccountName": "client",
                 "containers": [{"name": "app", "image": "app"}]}})
    args = ("--webhook-config", f"absent-{namespace}", "--sidecar-clusterrole", role,
            "--namespace", namespace)
    try:
        _, findings = check(control_plane, capsys, *args)
        assert only(findings, "rbac", "ClusterRole")["status"] == "FAIL"
        denied = only(findings, "rbac", "service account 'client'")
        assert denied["status"] == "FAIL"
        assert f"service account 'client' in namespace '{namespace}' cannot" in denied["message"]
        assert "get/list/watch statefulsets.apps; get/list/watch pods" in denied["message"]

        # The shipped ClusterRole's rules, under this test's own name.
        shipped = manifest("base/sidecar-clusterrole.yaml")
        rbac.create_cluster_role({"metadata": {"name": role}, "rules": shipped["rules"]})
        _, findings = check(control_plane, capsys, *args)
        assert not [f for f in findings if "ClusterRole" in f["message"]]
        [hint] = only(findings, "rbac", "service account 'client'")["hints"]
        assert hint == (f"kubectl create rolebinding {role}-client -n {namespace} "
                        f"--clusterrole={role} --serviceaccount={namespace}:client")

        control_plane.kubectl(*shlex.split(hint)[1:])  # exactly what the user is told to run

        def turned_ok() -> bool:
            _, again = check(control_plane, capsys, *args)
            return only(again, "rbac", "service account 'client'")["status"] == "OK"

        wait_for(turned_ok, "the rbac finding to turn OK once the RoleBinding exists", timeout=20)
    finally:
        try:
            rbac.delete_cluster_role(role)
        except ApiException as err:
            if err.status != 404:
                raise


def test_pods_without_the_sidecar_are_listed(control_plane: Any, namespace: str, kubelet: Any,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    _label_opted_in(control_plane, namespace)
    kubelet.watch(namespace)

    def pod(name: str, containers: tuple[str, ...] = ("app",), **extra: Any) -> None:
        meta = {"name": name, **extra.pop("meta", {})}
        core.create_namespaced_pod(namespace, {"metadata": meta, "spec": {
            "containers": [{"name": c, "image": c} for c in containers], **extra}})

    pod("opted-out", meta={"annotations": {"shard.io/inject": "false"}})
    pod("injected", containers=("shard-router", "app"))
    pod("host", hostNetwork=True)
    control_plane.kubectl("create", "deployment", "web", "--image=web", "-n", namespace)
    web_pod = wait_for(
        lambda: [p.metadata.name for p in core.list_namespaced_pod(
            namespace, label_selector="app=web").items],
        "the Deployment's pod", timeout=30)[0]

    code, findings = check(control_plane, capsys, "--webhook-config", f"absent-{namespace}",
                           "--namespace", namespace)
    assert code == 1
    finding = only(findings, "sidecar")
    assert finding["status"] == "FAIL"
    assert finding["message"].startswith(f"namespace '{namespace}': 1 of 2 opted-in pod(s) lack")
    assert finding["message"].endswith(f": {web_pod}")
    assert finding["hints"] == [f"kubectl rollout restart deployment/web -n {namespace}"]
    control_plane.kubectl(*shlex.split(finding["hints"][0])[1:])  # the hint is a working command


def test_a_bad_slot_map_of_a_routed_statefulset_is_reported(
        control_plane: Any, namespace: str, capsys: pytest.CaptureFixture[str]) -> None:
    api = control_plane.api_client()
    _label_opted_in(control_plane, namespace)
    client.CoreV1Api(api).create_namespaced_pod(namespace, {
        "metadata": {"name": "client", "annotations": {"shard.io/backend": "ledger,audit"}},
        "spec": {"containers": [{"name": "shard-router", "image": "r"},
                                {"name": "app", "image": "a"}]}})

    def sts(name: str, annotations: dict[str, str]) -> None:
        client.AppsV1Api(api).create_namespaced_stateful_set(namespace, {
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"serviceName": name, "replicas": 0, "selector": {"matchLabels": {"a": name}},
                     "template": {"metadata": {"labels": {"a": name}},
                                  "spec": {"containers": [{"name": "c", "image": "c"}]}}}})

    sts("ledger", {"shard.io/slots": "64", "shard.io/assignment": "0-10:0"})
    sts("audit", {"shard.io/slots": "8"})
    code, findings = check(control_plane, capsys, "--webhook-config", f"absent-{namespace}",
                           "--namespace", namespace)
    assert code == 1
    bad = only(findings, "slots", f"statefulset {namespace}/ledger")
    assert bad["status"] == "FAIL" and "53 of 64 slots have no owner" in bad["message"]
    fresh = only(findings, "slots", f"statefulset {namespace}/audit")
    assert fresh["status"] == "WARN" and fresh["hints"] == [
        f"shardmesh reshard audit -n {namespace} --init"]


def test_directory_mode_needs_no_rolebinding_in_the_own_namespace(
    control_plane: Any, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """SPEC §7: with the webhook injecting a directory, a same-namespace route needs no
    RBAC; a route to another namespace needs shardmaps.shard.io there."""
    api = control_plane.api_client()
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    apps = client.AppsV1Api(api)
    injector, bank = f"{namespace}-inj"[:63], f"{namespace}-bank"[:63]
    for ns in (injector, bank):
        core.create_namespace({"metadata": {"name": ns}})
    try:
        apps.create_namespaced_deployment(injector, {
            "metadata": {"name": "shardmesh-webhook"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "w"}},
                     "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [
                         {"name": "webhook", "image": "example.invalid/w:1", "env": [
                             {"name": "SHARDMESH_DIRECTORY_URL",
                              "value": "https://shardmesh-directory.x.svc"}]}]}}}})
        _label_opted_in(control_plane, namespace)
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "client"}})
        core.create_namespaced_pod(namespace, {
            "metadata": {"name": "app", "annotations": {
                "shard.io/backend": f"store:8080,ledger=accounts.{bank}"}},
            "spec": {"serviceAccountName": "client",
                     "containers": [{"name": "app", "image": "app"}]}})
        args = ("--webhook-config", f"absent-{namespace}", "--injector-namespace", injector,
                "--namespace", namespace)
        _, findings = check(control_plane, capsys, *args)
        rbac_lines = [f for f in findings if f["check"] == "rbac"]
        assert [f["status"] for f in rbac_lines] == ["FAIL"], rbac_lines  # bank only
        [denied] = rbac_lines
        assert (f"cannot get/watch shardmaps.shard.io in namespace '{bank}' "
                "(through the directory)") in denied["message"]
        [hint] = denied["hints"]
        assert hint == (f"kubectl create rolebinding shardmesh-shardmap-reader-{namespace}-client"
                        f" -n {bank} --clusterrole=shardmesh-shardmap-reader "
                        f"--serviceaccount={namespace}:client")
        with_role = True
        try:
            rbac.create_cluster_role(manifest("base/shardmap-reader-clusterrole.yaml"))
        except ApiException as err:
            if err.status != 409:
                raise
            with_role = False  # already there (kubectl apply -k manifests/): leave it
        try:
            control_plane.kubectl(*shlex.split(hint)[1:])

            def turned_ok() -> bool:
                _, again = check(control_plane, capsys, *args)
                return [f["status"] for f in again if f["check"] == "rbac"] == ["OK"]

            wait_for(turned_ok, "the shardmaps grant to satisfy the check", timeout=20)
        finally:
            if with_role:
                rbac.delete_cluster_role("shardmesh-shardmap-reader")
    finally:
        for ns in (injector, bank):
            core.delete_namespace(ns)
