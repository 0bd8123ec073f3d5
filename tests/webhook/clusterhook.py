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
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.cluster.controlplane import ControlPlane
from tests.cluster.waiting import wait_for
from tests.webhook import serving

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
SELECTOR_LABEL = "shardmesh.test/webhook"


@dataclass
class Registration:
    """One MutatingWebhookConfiguration and the names the webhook must be told."""

    ident: str
    config_name: str
    injector_namespace: str
    secret_name: str
    port: int

    def webhook_args(self, control_plane: ControlPlane, cert_dir: Path,
                     extra: Sequence[str] = ()) -> list[str]:
        return [
            "--kubeconfig", str(control_plane.kubeconfig),
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


def register(api: client.ApiClient, port: int) -> Registration:
    """Create the injector namespace and the webhook configuration (without caBundle)."""
    ident = secrets.token_hex(3)
    reg = Registration(ident, f"shardmesh-sidecar-injector-{ident}", f"shardmesh-wh-{ident}",
                       "shardmesh-webhook-certs", port)
    client.CoreV1Api(api).create_namespace({"metadata": {"name": reg.injector_namespace}})
    config = manifest_config()
    config["metadata"]["name"] = reg.config_name
    for hook in config["webhooks"]:
        hook["clientConfig"] = {"url": f"https://{serving.HOST}:{port}/mutate"}
        hook["namespaceSelector"]["matchExpressions"].append(
            {"key": SELECTOR_LABEL, "operator": "In", "values": [ident]})
    client.AdmissionregistrationV1Api(api).create_mutating_webhook_configuration(config)
    return reg


def unregister(api: client.ApiClient, reg: Registration) -> None:
    client.AdmissionregistrationV1Api(api).delete_mutating_webhook_configuration(reg.config_name)
    client.CoreV1Api(api).delete_namespace(reg.injector_namespace)


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
