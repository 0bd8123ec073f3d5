"""The end-to-end story on a real control plane, shared by the test and ``make demo-cluster``.

1. ``kubectl apply --server-side -k manifests/`` (webhook run locally, see ``install``).
2. An app namespace opted in with ``shard.io/inject=true``; a StatefulSet
   ``sharded-svc`` (3 replicas, its pods opted out) whose pods' processes are
   ``AccountsBackend``s on the pods' loopback IPs (``replicas``); the sidecar
   RoleBinding of ``manifests/examples``; a client Deployment annotated with
   ``shard.io/backend: bank=sharded-svc:8080``.
3. The client pod as stored (injected by the webhook) gives the sidecar
   process: its exact command, env and downward API files (``injected``).
4. Rounds of deposits through the sidecar, each one epoch of the shard map
   (see ``verdicts``): scaling, an unready replica, a killed replica, an
   apiserver restart under traffic.

Every step returns what it saw; judging is left to ``verdicts`` and the caller.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from sidecar.shardfn import Strategy, ordinal_for
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kubelet import Kubelet, raw_json
from tests.cluster.waiting import wait_for
from tests.e2e import injected, install, podspec
from tests.e2e.replicas import Replicas
from tests.e2e.traffic import Answer, Pump, deposit_all
from tests.e2e.verdicts import Holding, answer_violations, epoch_violations

STATEFULSET = "sharded-svc"
ROUTE = "bank"
PORT = 8080
#: Not the default, so a sidecar that ignored shard.io/strategy.bank would misroute (409).
STRATEGY: Strategy = "jump"
ACCOUNTS = tuple(str(n) for n in range(100_000, 101_000))
CLIENT = "client"
ROLEBINDING_EXAMPLE = install.MANIFESTS / "examples" / "sidecar-rolebinding.yaml"
MAP_TIMEOUT = 60.0


def as_body(manifest: dict[str, Any]) -> Any:
    """A plain manifest for the typed client (it accepts dicts; its stubs want models)."""
    return manifest


def client_annotations() -> dict[str, str]:
    return {"shard.io/backend": f"{ROUTE}={STATEFULSET}:{PORT}",
            f"shard.io/key.{ROUTE}": "path:1",
            f"shard.io/strategy.{ROUTE}": STRATEGY}


def deposits(accounts: Sequence[str]) -> list[str]:
    """1 or 2 deposits per account, so counters differ."""
    return [a for i, a in enumerate(accounts) for _ in range(1 + i % 2)]


@dataclass
class Round:
    """One epoch of traffic: what the app saw and what each replica held."""

    title: str
    count: int
    down: frozenset[int]
    answers: list[Answer]
    holdings: list[Holding]
    violations: list[str]
    seconds: float

    def statuses(self) -> Counter[int]:
        return Counter(a.status for a in self.answers)


@dataclass
class Injection:
    """What the webhook did to the pods, as the API server stored them."""

    client_pod: dict[str, Any]
    backend_pods: list[dict[str, Any]]
    sidecar_names: list[str] = field(default_factory=list)


class Story:
    """The whole set-up, with one method per step; use as a context manager (it cleans up)."""

    def __init__(self, cp: ControlPlane, kubelet: Kubelet, workdir: Path,
                 say: Callable[[str], None] = print) -> None:
        self.cp, self.kubelet, self.workdir, self.say = cp, kubelet, workdir, say
        self.api = cp.api_client()
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.namespace = f"shop-{secrets.token_hex(3)}"
        self._cleanup = contextlib.ExitStack()
        self.installation: install.Installation | None = None
        self.replicas: Replicas | None = None
        self.sidecar: injected.InjectedSidecar | None = None
        self.rounds: list[Round] = []

    def __enter__(self) -> Story:
        return self

    def __exit__(self, *exc: object) -> None:
        self.say("cleaning up")
        self._cleanup.close()

    # ---- set-up ---------------------------------------------------------------------------

    def apply_manifests(self) -> install.Installation:
        self.say("kubectl apply --server-side -k manifests/ (the webhook runs locally, by URL)")
        inst = install.install(self.cp, self.workdir)
        self._cleanup.callback(install.uninstall, inst)
        self.installation = inst
        for line in inst.applied:
            self.say(f"  {line}")
        return inst

    def create_app_namespace(self) -> None:
        assert self.installation is not None, "apply_manifests() first"
        labels = {"shard.io/inject": "true", **self.installation.namespace_labels}
        self.say(f"namespace {self.namespace} with label shard.io/inject=true")
        self.core.create_namespace(as_body({"metadata": {"name": self.namespace,
                                                         "labels": labels}}))
        self._cleanup.callback(self._delete_namespace)
        self.kubelet.watch(self.namespace)
        wait_for(lambda: self.core.read_namespaced_service_account("default", self.namespace),
                 f"ServiceAccount default in {self.namespace}", timeout=30)

    def _delete_namespace(self) -> None:
        with contextlib.suppress(client.exceptions.ApiException):
            self.core.delete_namespace(self.namespace)

    def grant_sidecar_rbac(self) -> str:
        """The example RoleBinding, for this namespace; returns the service account it binds."""
        binding = yaml.safe_load(ROLEBINDING_EXAMPLE.read_text())
        binding["metadata"]["namespace"] = self.namespace
        subject = binding["subjects"][0]
        subject["namespace"] = self.namespace
        self.core.create_namespaced_service_account(
            self.namespace, as_body({"metadata": {"name": subject["name"]}}))
        client.RbacAuthorizationV1Api(self.api).create_namespaced_role_binding(
            self.namespace, binding)
        self.say(f"RoleBinding {binding['metadata']['name']}: ClusterRole "
                 f"{binding['roleRef']['name']} for ServiceAccount {subject['name']} "
                 "(manifests/examples/sidecar-rolebinding.yaml)")
        return str(subject["name"])

    def create_backends(self, replicas: int) -> None:
        self.say(f"StatefulSet {STATEFULSET} ({replicas} replicas, pods opted out) "
                 f"+ headless Service; each pod's process is an AccountsBackend on its pod IP")
        labels = {"app": STATEFULSET}
        self.core.create_namespaced_service(self.namespace, as_body({
            "metadata": {"name": STATEFULSET},
            "spec": {"clusterIP": "None", "selector": labels,
                     "ports": [{"name": "http", "port": PORT}]}}))
        self.replicas = Replicas(self.cp, self.kubelet, self.namespace, STATEFULSET, PORT,
                                 STRATEGY).start()
        self._cleanup.callback(self.replicas.stop)
        self.apps.create_namespaced_stateful_set(self.namespace, as_body({
            "metadata": {"name": STATEFULSET},
            "spec": {"serviceName": STATEFULSET, "replicas": replicas,
                     "selector": {"matchLabels": labels},
                     "template": {
                         "metadata": {"labels": labels,
                                      "annotations": {"shard.io/inject": "false"}},
                         "spec": {"containers": [{
                             "name": "accounts", "image": "example.invalid/accounts:1",
                             "ports": [{"containerPort": PORT}]}]}}}}))

    def create_client(self, service_account: str) -> dict[str, Any]:
        """The client Deployment; returns its pod as stored (after the webhook)."""
        annotations = client_annotations()
        self.say(f"Deployment {CLIENT} with "
                 + ", ".join(f"{k}: {v}" for k, v in annotations.items()))
        labels = {"app": CLIENT}
        self.apps.create_namespaced_deployment(self.namespace, as_body({
            "metadata": {"name": CLIENT},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {
                         "metadata": {"labels": labels, "annotations": annotations},
                         "spec": {"serviceAccountName": service_account,
                                  "containers": [{"name": "app",
                                                  "image": "example.invalid/client:1"}]}}}}))
        return wait_for(lambda: self._pods(f"app={CLIENT}")[:1],
                        f"the {CLIENT} pod in {self.namespace}", timeout=60)[0]

    def _pods(self, selector: str) -> list[dict[str, Any]]:
        body = raw_json(self.core.list_namespaced_pod(self.namespace, label_selector=selector,
                                                      _preload_content=False))
        return [p for p in body["items"] if not p["metadata"].get("deletionTimestamp")]

    def injection(self, client_pod: dict[str, Any]) -> Injection:
        backends = self._pods(f"app={STATEFULSET}")
        names = [c["name"] for c in (client_pod["spec"].get("initContainers") or [])
                 + client_pod["spec"]["containers"]]
        return Injection(client_pod, backends, names)

    def start_sidecar(self, pod: dict[str, Any]) -> injected.InjectedSidecar:
        container, native = podspec.find_container(pod)
        self.sidecar = injected.launch(self.api, self.cp.server, pod, self.workdir)
        self._cleanup.callback(self.sidecar.stop)
        where = "initContainers, restartPolicy Always" if native else "containers"
        self.say(f"started {podspec.SIDECAR} ({where}) as injected: "
                 f"{' '.join(self.sidecar.injected)}")
        self.say(f"  env {', '.join(e['name'] for e in container.get('env') or [])}; "
                 f"KUBECONFIG = ServiceAccount {pod['spec'].get('serviceAccountName')} token; "
                 f"data port {self.sidecar.listen_port}, admin port {self.sidecar.admin_port}")
        return self.sidecar

    def set_up(self, replicas: int = 3) -> Injection:
        """Steps 1-3 of the module docstring; the sidecar's map shows ``replicas`` ready."""
        self.apply_manifests()
        self.create_app_namespace()
        account = self.grant_sidecar_rbac()
        self.create_backends(replicas)
        pod = self.create_client(account)
        self.start_sidecar(pod)
        self.wait_for_map(replicas)
        return self.injection(pod)

    # ---- the shard map --------------------------------------------------------------------

    def route(self) -> dict[str, Any]:
        assert self.sidecar is not None, "start_sidecar() first"
        return self.sidecar.route(ROUTE)

    def wait_for_map(self, count: int, down: frozenset[int] = frozenset()) -> float:
        """Wait until /_shard/routes shows N=count with exactly the ``down`` ordinals unready."""
        began = time.monotonic()

        def matches() -> bool:
            route = self.route()
            ready = {s["ordinal"] for s in route["shards"] if s["ready"]}
            return bool(route["synced"] and route["count"] == count
                        and ready == set(range(count)) - down)

        wait_for(matches, f"/_shard/routes to show N={count}, down={sorted(down)}",
                 timeout=MAP_TIMEOUT)
        return time.monotonic() - began

    def scale(self, count: int) -> float:
        """Scale the StatefulSet; returns seconds until the sidecar's map shows it all ready."""
        self.apps.patch_namespaced_stateful_set_scale(STATEFULSET, self.namespace,
                                                      {"spec": {"replicas": count}})
        return self.wait_for_map(count)

    # ---- traffic --------------------------------------------------------------------------

    def _judge(self, title: str, count: int, down: frozenset[int], answers: list[Answer],
               leftover: list[Holding], began: float) -> Round:
        assert self.replicas is not None
        holdings = self.replicas.drain()
        violations = [f"state written between epochs: {h.replica} {h.counters}"
                      for h in leftover]
        violations += answer_violations(answers, STATEFULSET, STRATEGY, count, down)
        violations += epoch_violations(holdings, answers, STATEFULSET, STRATEGY, count)
        result = Round(title, count, down, answers, holdings, violations,
                       time.monotonic() - began)
        self.rounds.append(result)
        return result

    def deposit_round(self, title: str, count: int, down: frozenset[int] = frozenset(),
                      accounts: Sequence[str] = ACCOUNTS) -> Round:
        """Deposits for every account, as one epoch of N=count."""
        assert self.replicas is not None and self.sidecar is not None
        leftover = self.replicas.drain()
        began = time.monotonic()
        answers = deposit_all(self.sidecar.listen_port, ROUTE, deposits(accounts))
        return self._judge(title, count, down, answers, leftover, began)

    def restart_apiserver_under_traffic(self, count: int) -> tuple[Round, float]:
        """Deposits flow while kube-apiserver restarts; returns the round and the restart time."""
        assert self.replicas is not None and self.sidecar is not None
        leftover = self.replicas.drain()
        began = time.monotonic()
        pump = Pump(self.sidecar.listen_port, ROUTE, ACCOUNTS).start()
        try:
            wait_for(lambda: pump.sent() >= 200, "traffic before the restart", timeout=30)
            restart_began = time.monotonic()
            self.cp.restart_apiserver()
            restart = time.monotonic() - restart_began
            mark = pump.sent()
            wait_for(lambda: pump.sent() >= mark + 200, "traffic after the restart", timeout=30)
        finally:
            answers = pump.stop()
        return self._judge("apiserver restart", count, down=frozenset(), answers=answers,
                           leftover=leftover, began=began), restart

    def misrouted(self) -> int:
        assert self.replicas is not None
        return self.replicas.misrouted()


def table(result: Round, shown: int) -> list[str]:
    """account -> ordinal -> replica that answered -> its counter, like ``shardmesh demo``."""
    last: dict[str, Answer] = {}
    for answer in result.answers:
        last[answer.account] = answer
    lines = [f"  {'account':<10} {'ordinal':>7}  {'replica':<15} {'counter':>7}"]
    for account in sorted(last)[:shown]:
        a = last[account]
        body = a.body if isinstance(a.body, dict) else {}
        replica = body.get("replica") or f"HTTP {a.status} {body.get('error', '')}".strip()
        lines.append(f"  {account:<10} {ordinal_for(account, STRATEGY, result.count):>7}  "
                     f"{replica:<15} {body.get('count', '-'):>7}")
    return lines


def summary(result: Round) -> str:
    per_replica = ", ".join(f"{h.replica}: {len(h.counters)}"
                            for h in sorted(result.holdings, key=lambda h: h.replica))
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(result.statuses().items()))
    return (f"{len(result.answers)} requests in {result.seconds:.1f}s (HTTP {statuses}); "
            f"accounts per replica: {per_replica}")


def describe(answer: Answer) -> str:
    return f"HTTP {answer.status}, Retry-After: {answer.retry_after}, {json.dumps(answer.body)}"
