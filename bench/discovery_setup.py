"""What ``bench/discovery.py`` sets up on the control plane: the workload and the clients'
credentials (a token of its own for every client, as every pod has one)."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from kubernetes import client

from tests.cluster.controlplane import ControlPlane
from tests.directory.harness import grant
from tests.e2e.credentials import TOKEN_SECONDS, cluster_ca

NS, STS, ACCOUNT = "bench", "web", "reader"


def create_workload(cp: ControlPlane) -> None:
    """Namespaces ``bench-home`` (the directory's) and ``bench`` with StatefulSet ``web``
    (2 replicas), and the account the clients run as, with a direct-mode sidecar's rights
    (the directory needs none for a caller of the StatefulSet's own namespace)."""
    api = cp.api_client()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    for ns in ("bench-home", NS):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    apps.create_namespaced_stateful_set(NS, {
        "metadata": {"name": STS},
        "spec": {"serviceName": STS, "replicas": 2, "podManagementPolicy": "Parallel",
                 "selector": {"matchLabels": {"app": STS}},
                 "template": {"metadata": {"labels": {"app": STS}}, "spec": {
                     "containers": [{"name": "a", "image": "example.invalid/a:1",
                                     "ports": [{"containerPort": 8080}]}]}}}})
    grant(api, NS, ACCOUNT)


def issue_tokens(cp: ControlPlane, n: int) -> list[str]:
    """``n`` TokenRequests for the clients' account: n distinct tokens, as n pods hold."""
    core = client.CoreV1Api(cp.api_client())

    def one(_: int) -> str:
        answer = core.create_namespaced_service_account_token(
            ACCOUNT, NS, {"spec": {"expirationSeconds": TOKEN_SECONDS}})
        return str(answer.status.token)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def write_kubeconfigs(cp: ControlPlane, tokens: list[str], folder: Path) -> list[Path]:
    """A kubeconfig per token (what a direct-mode sidecar's in-cluster config amounts to)."""
    ca = base64.b64encode(cluster_ca(cp.api_client(), NS).encode()).decode()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, token in enumerate(tokens):
        user = f"client-{i}"
        doc = {"apiVersion": "v1", "kind": "Config",
               "clusters": [{"name": "cluster", "cluster": {
                   "server": cp.server, "certificate-authority-data": ca}}],
               "users": [{"name": user, "user": {"token": token}}],
               "contexts": [{"name": "sa", "context": {"cluster": "cluster", "user": user,
                                                       "namespace": NS}}],
               "current-context": "sa"}
        path = folder / f"{user}.kubeconfig"
        path.write_text(yaml.safe_dump(doc))
        paths.append(path)
    return paths
