"""``kubectl apply --server-side -k manifests/`` for real, with the webhook itself run locally.

What is applied is exactly ``kubectl kustomize manifests/`` except for the
MutatingWebhookConfiguration's ``clientConfig``: the Service has no
endpoints here (no kubelet runs the webhook Deployment's pods), so it points
at the local webhook by URL instead, and its namespaceSelector gets one more
expression so it only sees namespaces of this run (other tests share the
control plane). Everything else (namespace, RBAC, Deployment, Service, PDB,
the sidecar ClusterRole) must be accepted by the API server as shipped.

The local webhook gets the Deployment's own environment (fieldRefs resolved)
and the Deployment's service account, through a TokenRequest kubeconfig, so
the manifests' RBAC is what it runs with. Only where it listens, where it
writes its certificate files and the extra 127.0.0.1 SAN are set by flags.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import ControlPlane
from tests.cluster.waiting import wait_for
from tests.e2e import podspec
from tests.e2e.credentials import write_service_account_kubeconfig
from tests.webhook import serving

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
SELECTOR_LABEL = "shardmesh.test/e2e"


@dataclass
class Installation:
    """The applied manifests and the local webhook serving them."""

    control_plane: ControlPlane
    documents: list[dict[str, Any]]
    webhook: serving.Webhook | None
    ident: str
    config_name: str
    injector_namespace: str
    ca_bundle: bytes = b""
    applied: list[str] = field(default_factory=list)

    @property
    def namespace_labels(self) -> dict[str, str]:
        """Labels that put a namespace in reach of this installation's webhook."""
        return {SELECTOR_LABEL: self.ident}


def kind_named(documents: list[dict[str, Any]], kind: str, name: str | None = None
               ) -> dict[str, Any]:
    found = [d for d in documents if d.get("kind") == kind
             and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} in manifests/, found {len(found)}")
    return found[0]


def localize(documents: list[dict[str, Any]], url: str, ident: str) -> list[dict[str, Any]]:
    """The documents with the webhook reached by URL and limited to this run's namespaces."""
    config = kind_named(documents, "MutatingWebhookConfiguration")
    for hook in config["webhooks"]:
        if "service" not in hook["clientConfig"]:
            raise AssertionError(f"webhook {hook['name']} has no clientConfig.service to replace")
        hook["clientConfig"] = {"url": url}
        selector = hook.setdefault("namespaceSelector", {})
        selector.setdefault("matchExpressions", []).append(
            {"key": SELECTOR_LABEL, "operator": "In", "values": [ident]})
    return documents


def webhook_environment(documents: list[dict[str, Any]]) -> tuple[dict[str, str], str, str]:
    """The webhook container's env (as its pod would see it), its namespace and account."""
    deployment = kind_named(documents, "Deployment", "shardmesh-webhook")
    namespace = deployment["metadata"]["namespace"]
    template = deployment["spec"]["template"]
    pod = {"metadata": {**template.get("metadata", {}), "namespace": namespace,
                        "name": f"{deployment['metadata']['name']}-local"},
           "spec": template["spec"]}
    container = template["spec"]["containers"][0]
    return podspec.environment(pod, container), namespace, template["spec"]["serviceAccountName"]


def ca_bundle(api: client.ApiClient, name: str) -> bytes:
    config = client.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(name)
    hooks = config.webhooks or []
    value = hooks[0].client_config.ca_bundle if hooks else None
    return base64.b64decode(value) if value else b""


def install(cp: ControlPlane, workdir: Path) -> Installation:
    """Apply the manifests and start the local webhook; :func:`uninstall` undoes it all."""
    ident = secrets.token_hex(3)
    port = serving.free_port()
    built = list(yaml.safe_load_all(cp.kubectl("kustomize", str(MANIFESTS)).stdout))
    documents = localize(built, f"https://{serving.HOST}:{port}/mutate", ident)
    config_name = kind_named(documents, "MutatingWebhookConfiguration")["metadata"]["name"]
    env, namespace, account = webhook_environment(documents)
    inst = Installation(cp, documents, None, ident, config_name, namespace)
    try:
        result = cp.kubectl("apply", "--server-side", "-f", "-",
                            input=for_kubectl(documents))
        inst.applied = [line for line in result.stdout.splitlines() if line.strip()]
        api = cp.api_client()
        kubeconfig = write_service_account_kubeconfig(workdir / "webhook.kubeconfig", cp.server,
                                                      api, namespace, account)
        args = ["--kubeconfig", str(kubeconfig), "--extra-san", serving.HOST,
                "--cert-dir", str(workdir / "webhook-certs")]
        inst.webhook = serving.start(args, workdir / "webhook.log", port=port, env=env)
        inst.ca_bundle = wait_for(lambda: ca_bundle(api, config_name),
                                  f"the webhook to patch its caBundle into {config_name}",
                                  timeout=30)
    except BaseException:
        uninstall(inst)
        raise
    return inst


def uninstall(inst: Installation) -> None:
    """Remove the webhook configuration first (so nothing calls a stopped webhook), stop the
    webhook, then delete everything else and wait until it is gone (namespace included)."""
    api = inst.control_plane.api_client()
    with contextlib.suppress(ApiException):
        client.AdmissionregistrationV1Api(api).delete_mutating_webhook_configuration(
            inst.config_name)
    if inst.webhook is not None:
        inst.webhook.stop()
    inst.control_plane.kubectl("delete", "--ignore-not-found", "--wait=true", "--timeout=90s",
                               "-f", "-", input=for_kubectl(inst.documents),
                               check=False, timeout=120)


def for_kubectl(documents: list[dict[str, Any]]) -> str:
    """The documents as a stream kubectl reads exactly: JSON, which is YAML.

    PyYAML writes a string such as ``41e122`` (a random hex ident) unquoted,
    since to YAML 1.1 it is no number, but kubectl reads YAML 1.2 and gets the
    float 4.1e123; JSON leaves no such room.
    """
    return "\n---\n".join(json.dumps(doc) for doc in documents)
