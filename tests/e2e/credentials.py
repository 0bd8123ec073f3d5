"""Kubeconfigs that authenticate as a service account, so RBAC is the real one.

A pod's containers reach the API with the token the kubelet projects into
``/var/run/secrets/kubernetes.io/serviceaccount`` (a TokenRequest bound to the
pod) and the cluster CA from the ``kube-root-ca.crt`` ConfigMap. Processes
run outside the cluster cannot use that mount (in-cluster config reads fixed
paths), so this writes the same two things into a kubeconfig instead.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.cluster.waiting import wait_for

TOKEN_SECONDS = 3600


def cluster_ca(api: client.ApiClient, namespace: str) -> str:
    """The CA the root-ca publisher put into the namespace (what pods get as ca.crt)."""
    core = client.CoreV1Api(api)
    config_map = wait_for(lambda: core.read_namespaced_config_map("kube-root-ca.crt", namespace),
                          f"ConfigMap kube-root-ca.crt in {namespace}", timeout=30)
    ca: str = (config_map.data or {})["ca.crt"]
    return ca


def service_account_token(api: client.ApiClient, namespace: str, account: str,
                          bound_pod: dict[str, Any] | None = None) -> str:
    """A TokenRequest for the service account, bound to ``bound_pod`` like a kubelet's."""
    spec: dict[str, Any] = {"expirationSeconds": TOKEN_SECONDS}
    if bound_pod is not None:
        meta = bound_pod["metadata"]
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod",
                                  "name": meta["name"], "uid": meta["uid"]}
    core = client.CoreV1Api(api)
    wait_for(lambda: core.read_namespaced_service_account(account, namespace),
             f"ServiceAccount {namespace}/{account}", timeout=30)
    body: Any = {"spec": spec}
    answer = core.create_namespaced_service_account_token(account, namespace, body)
    if answer.status is None or not answer.status.token:
        raise RuntimeError(f"TokenRequest for {namespace}/{account} returned no token")
    return str(answer.status.token)


def write_service_account_kubeconfig(path: Path, server: str, api: client.ApiClient,
                                     namespace: str, account: str,
                                     bound_pod: dict[str, Any] | None = None) -> Path:
    """A kubeconfig for ``system:serviceaccount:<namespace>:<account>``."""
    ca = cluster_ca(api, namespace)
    token = service_account_token(api, namespace, account, bound_pod)
    user = f"system:serviceaccount:{namespace}:{account}"
    doc = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {
            "server": server,
            "certificate-authority-data": base64.b64encode(ca.encode()).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "cluster", "user": user,
                                                "namespace": namespace}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path
