"""A local webhook registered with the test control plane, for the cluster tests.

The webhook runs as the real ``shardmesh webhook`` (gunicorn, TLS) on
127.0.0.1, keeps its certificates in a Secret of its own namespace and
patches its caBundle into a MutatingWebhookConfiguration built from
``manifests/base`` with ``clientConfig.url`` instead of the Service.

Isolation: other tests share the control plane, so each configuration gets
its own name and only sees namespaces carrying its ``shardmesh.test/webhook``
label, on top of the manifest's own namespaceSelector.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.cluster.waiting import wait_for
from tests.webhook import serving
from webhook.render import TOKEN_DIR

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
SELECTOR_LABEL = "shardmesh.test/webhook"
BACKEND = {"shard.io/backend": "accounts=sharded-svc:8080"}


@dataclass
class Registration:
    """One MutatingWebhookConfiguration and the names the webhook must be told."""

    ident: str
    config_name: str
    injector_namespace: str
    secret_name: str
    port: int

    @property
    def cluster_role(self) -> str:
        return f"shardmesh-webhook-{self.ident}"

    def webhook_args(self, kubeconfig: Path, cert_dir: Path,
                     extra: Sequence[str] = ()) -> list[str]:
        return [
            "--kubeconfig", str(kubeconfig),
            "--injector-namespace", self.injector_namespace,
            "--webhook-config-name", self.config_name,
            "--secret-name", self.secret_name,
            "--extra-san", serving.HOST,
            "--cert-dir", str(cert_dir),
            "--namespace-cache-s", "0",
            "--cert-check-s", "1",
            *extra,
        ]


def manifest_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(
        (MANIFESTS / "base" / "mutatingwebhookconfiguration.yaml").read_text())
    return config


def register(api: client.ApiClient, port: int, via_service: bool = False) -> Registration:
    """Create the injector namespace, the manifests' RBAC for it, and the webhook
    configuration (without caBundle). ``via_service`` keeps the manifests'
    ``clientConfig.service``, in the injector namespace; else the URL of ``port`` on HOST."""
    ident = secrets.token_hex(3)
    reg = Registration(ident, f"shardmesh-sidecar-injector-{ident}", f"shardmesh-wh-{ident}",
                       "shardmesh-webhook-certs", port)
    client.CoreV1Api(api).create_namespace({"metadata": {"name": reg.injector_namespace}})
    create_rbac(api, reg)
    config = manifest_config()
    config["metadata"]["name"] = reg.config_name
    for hook in config["webhooks"]:
        if via_service:
            hook["clientConfig"]["service"]["namespace"] = reg.injector_namespace
        else:
            hook["clientConfig"] = {"url": f"https://{serving.HOST}:{port}/mutate"}
        hook["namespaceSelector"]["matchExpressions"].append(
            {"key": SELECTOR_LABEL, "operator": "In", "values": [ident]})
    client.AdmissionregistrationV1Api(api).create_mutating_webhook_configuration(config)
    return reg


def unregister(api: client.ApiClient, reg: Registration) -> None:
    client.AdmissionregistrationV1Api(api).delete_mutating_webhook_configuration(reg.config_name)
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.delete_cluster_role_binding(reg.cluster_role)
    rbac.delete_cluster_role(reg.cluster_role)
    client.CoreV1Api(api).delete_namespace(reg.injector_namespace)


def rbac_documents(reg: Registration) -> list[dict[str, Any]]:
    """manifests/base/webhook-rbac.yaml, renamed for this registration (so the test
    runs the webhook with exactly the manifests' permissions)."""
    text = (MANIFESTS / "base" / "webhook-rbac.yaml").read_text()
    text = text.replace("shardmesh-sidecar-injector", reg.config_name)
    text = text.replace("namespace: shardmesh-system", f"namespace: {reg.injector_namespace}")
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        if doc["kind"].startswith("Cluster"):
            doc["metadata"]["name"] = reg.cluster_role
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] = reg.cluster_role
    return docs


def create_rbac(api: client.ApiClient, reg: Registration) -> None:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    for doc in rbac_documents(reg):
        kind, ns = doc["kind"], reg.injector_namespace
        if kind == "ServiceAccount":
            core.create_namespaced_service_account(ns, doc)
        elif kind == "Role":
            rbac.create_namespaced_role(ns, doc)
        elif kind == "RoleBinding":
            rbac.create_namespaced_role_binding(ns, doc)
        elif kind == "ClusterRole":
            rbac.create_cluster_role(doc)
        elif kind == "ClusterRoleBinding":
            rbac.create_cluster_role_binding(doc)
        else:
            raise AssertionError(f"unexpected {kind} in webhook-rbac.yaml")


def service_account_kubeconfig(api: client.ApiClient, reg: Registration,
                               admin_kubeconfig: Path, path: Path,
                               server: str | None = None) -> Path:
    """A kubeconfig that authenticates as the webhook's ServiceAccount (a bound token).
    ``server`` replaces the API server's URL (a relay to it), still verified by name."""
    request = {"spec": {"expirationSeconds": 3600}}
    token = client.CoreV1Api(api).create_namespaced_service_account_token(
        "shardmesh-webhook", reg.injector_namespace, request).status.token
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    if server:
        # A name in the API server's certificate (tests/cluster/pki.py), as in-cluster.
        cluster.update({"server": server, "tls-server-name": "kubernetes.default.svc"})
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "shardmesh-webhook", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test",
                                                  "user": "shardmesh-webhook"}}],
        "current-context": "test",
    }))
    return path


def ca_bundle(api: client.ApiClient, reg: Registration) -> bytes:
    config = client.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(
        reg.config_name)
    value = config.webhooks[0].client_config.ca_bundle
    return base64.b64decode(value) if value else b""


def secret_bundle(api: client.ApiClient, reg: Registration) -> dict[str, bytes]:
    secret = client.CoreV1Api(api).read_namespaced_secret(reg.secret_name, reg.injector_namespace)
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def wait_until_trusted(api: client.ApiClient, reg: Registration) -> bytes:
    """The caBundle, once the webhook has patched it in."""
    return wait_for(lambda: ca_bundle(api, reg), f"caBundle in {reg.config_name}", timeout=30)


def label_namespace(api: client.ApiClient, name: str, reg: Registration,
                    labels: dict[str, str] | None = None) -> None:
    body = {"metadata": {"labels": {SELECTOR_LABEL: reg.ident, **(labels or {})}}}
    client.CoreV1Api(api).patch_namespace(name, body)


def pod_manifest(name: str, annotations: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "example.com/client:1"}], **spec}}


def assert_injected_once(pod: Any) -> None:
    inits = pod.spec.init_containers or []
    names = [c.name for c in inits] + [c.name for c in pod.spec.containers]
    assert names.count("shard-router") == 1, names
    sidecar = inits[0]
    assert sidecar.name == "shard-router" and sidecar.restart_policy == "Always", \
        "a native sidecar, first among the init containers"
    status = json.loads(pod.metadata.annotations["shard.io/status"])
    assert status["initContainers"] == ["shard-router"] and status["routes"] == ["accounts"]
    # The ServiceAccount plugin re-ran after the webhook and mounted the token into
    # the sidecar as well (or, with automount off, the webhook's own volume is there).
    assert any(m.mount_path == TOKEN_DIR for m in sidecar.volume_mounts), sidecar.volume_mounts
