"""A real ``shardmesh directory`` process on the test control plane, and its clients.

The directory runs as its own service account, bound to the manifests' own
ClusterRole and Role (renamed per run), so the RBAC that ships is what it runs
with. Self-managed certificates: the CA comes from the Secret it creates.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import os
import secrets
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from directory.client import DirectoryError, Endpoint, client_context, resolve, stream
from tests.cluster.controlplane import ControlPlane
from tests.cluster.processes import free_port
from tests.cluster.waiting import wait_for
from tests.e2e.credentials import service_account_token, write_service_account_kubeconfig

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "manifests" / "base" / "directory-rbac.yaml"


def reader_role(name: str) -> dict[str, Any]:
    """What a sidecar's RoleBinding grants (manifests/base/sidecar-clusterrole.yaml)."""
    doc = yaml.safe_load((REPO / "manifests" / "base" / "sidecar-clusterrole.yaml").read_text())
    return {"metadata": {"name": name}, "rules": doc["rules"]}


def grant(api: client.ApiClient, namespace: str, account: str, role_ns: str | None = None
          ) -> None:
    """``account`` (in ``namespace``) may read StatefulSets and pods in ``role_ns``."""
    where = role_ns or namespace
    rbac, core = client.RbacAuthorizationV1Api(api), client.CoreV1Api(api)
    with contextlib.suppress(ApiException):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    name = f"read-{account}"
    rbac.create_namespaced_role(where, reader_role(name))
    rbac.create_namespaced_role_binding(where, {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]})


def grant_shardmaps(api: client.ApiClient, namespace: str, account: str, role_ns: str) -> None:
    """Bind the shipped ``shardmesh-shardmap-reader`` ClusterRole (renamed per call, as
    ClusterRoles are cluster-wide) for ``namespace/account`` in ``role_ns``."""
    doc = yaml.safe_load((REPO / "manifests" / "base" /
                          "shardmap-reader-clusterrole.yaml").read_text())
    name = f"shardmap-reader-{role_ns}-{account}"[:63]
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": doc["rules"]})
    rbac.create_namespaced_role_binding(role_ns, {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]})


def token(api: client.ApiClient, namespace: str, account: str) -> str:
    with contextlib.suppress(ApiException):
        client.CoreV1Api(api).create_namespaced_service_account(
            namespace, {"metadata": {"name": account}})
    return service_account_token(api, namespace, account)


@dataclass
class DirectoryProcess:
    cp: ControlPlane
    namespace: str
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    ca: bytes = b""
    kubeconfig: Path | None = None
    extra: tuple[str, ...] = ()
    ident: str = field(default_factory=lambda: secrets.token_hex(3))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def install_rbac(self) -> Path:
        """The manifests' directory RBAC, bound to an account in our namespace."""
        api = self.cp.api_client()
        rbac = client.RbacAuthorizationV1Api(api)
        core = client.CoreV1Api(api)
        for doc in yaml.safe_load_all(RBAC.read_text()):
            doc = copy.deepcopy(doc)
            meta = doc["metadata"]
            if "namespace" in meta:
                meta["namespace"] = self.namespace
            kind = doc["kind"]
            if kind in ("ClusterRole", "ClusterRoleBinding"):
                meta["name"] = f"{meta['name']}-{self.ident}"
            if kind in ("ClusterRoleBinding", "RoleBinding"):
                if kind == "ClusterRoleBinding":
                    doc["roleRef"]["name"] = f"{doc['roleRef']['name']}-{self.ident}"
                for subject in doc["subjects"]:
                    subject["namespace"] = self.namespace
            create = {"ServiceAccount": lambda d: core.create_namespaced_service_account(
                          self.namespace, d),
                      "ClusterRole": rbac.create_cluster_role,
                      "ClusterRoleBinding": rbac.create_cluster_role_binding,
                      "Role": lambda d: rbac.create_namespaced_role(self.namespace, d),
                      "RoleBinding": lambda d: rbac.create_namespaced_role_binding(
                          self.namespace, d)}[kind]
            create(doc)
        return write_service_account_kubeconfig(self.workdir / "directory.kubeconfig",
                                                self.cp.server, api, self.namespace,
                                                "shardmesh-directory")

    def start(self, *extra: str) -> DirectoryProcess:
        self.kubeconfig = self.install_rbac()
        self.extra = extra
        return self.launch()

    def launch(self) -> DirectoryProcess:
        """Run the process (again, after ``stop``: the same port, flags and account)."""
        argv = [sys.executable, "-m", "shardmesh", "directory", "--kubeconfig",
                str(self.kubeconfig), "--injector-namespace", self.namespace,
                "--host", "127.0.0.1", "--port", str(self.port), "--extra-san", "127.0.0.1",
                "--cert-dir", str(self.workdir / "certs"), "--heartbeat-s", "1",
                "--linger-s", "0", "--deny-cache-s", "0", *self.extra]
        self.log = (self.workdir / "directory.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        core = client.CoreV1Api(self.cp.api_client())
        secret = wait_for(lambda: core.read_namespaced_secret("shardmesh-directory-certs",
                                                              self.namespace),
                          "the directory's certificate Secret", timeout=30)
        self.ca = base64.b64decode(secret.data["ca-bundle.crt"])
        wait_for(lambda: self.get("/healthz")[0] == 200, "the directory's /healthz",
                 timeout=30)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        return (self.workdir / "directory.log").read_text(errors="replace")

    def context(self) -> ssl.SSLContext:
        return client_context(self.ca)

    def get(self, path: str, bearer: str | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.url + path)
        if bearer is not None:
            request.add_header("Authorization", f"Bearer {bearer}")
        try:
            with urllib.request.urlopen(request, context=self.context(), timeout=10) as answer:
                status, body = answer.status, answer.read()
        except urllib.error.HTTPError as err:
            status, body = err.code, err.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode()

    def metric(self, name: str) -> float:
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def endpoint(self, bearer: str) -> Endpoint:
        return Endpoint(self.url, bearer, self.context())

    def resolve(self, bearer: str, namespace: str, sts: str, key: str,
                strategy: str | None = None) -> dict[str, Any]:
        return asyncio.run(resolve(self.endpoint(bearer), namespace, sts, key, strategy))


class Subscription:
    """A stream consumed in a thread of its own; ``messages`` grows as lines arrive."""

    def __init__(self, directory: DirectoryProcess, bearer: str, namespace: str, sts: str,
                 source: str | None = None, generation: int | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.args = (directory.endpoint(bearer), namespace, sts, source, generation)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        async def consume() -> None:
            async with contextlib.aclosing(stream(*self.args)) as messages:
                async for message in messages:
                    self.messages.append(message)

        self.task = self.loop.create_task(consume())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except BaseException as err:  # noqa: BLE001 - the test reads it
            self.error = err

    def snapshots(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "snapshot"]

    def wait_snapshot(self, what: str, check: Any, timeout: float = 60) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            if self.error is not None:
                raise AssertionError(f"stream failed: {self.error!r}")
            shots = self.snapshots()
            return shots[-1] if shots and check(shots[-1]["map"]) else None

        return wait_for(probe, what, timeout=timeout)

    def close(self) -> None:
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)

    def refused(self, timeout: float = 20) -> DirectoryError:
        self.thread.join(timeout)
        assert isinstance(self.error, DirectoryError), f"expected a refusal, got {self.error!r}"
        return self.error


@contextlib.contextmanager
def subscribed(directory: DirectoryProcess, bearer: str, namespace: str, sts: str,
               **resume: Any) -> Iterator[Subscription]:
    sub = Subscription(directory, bearer, namespace, sts, **resume)
    try:
        yield sub
    finally:
        sub.close()


def settle(seconds: float) -> None:
    time.sleep(seconds)
