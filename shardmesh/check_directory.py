"""``shardmesh check``'s directory section: installed? ready replicas? reachable? subscribers?

The directory is optional: without its Deployment the section prints nothing
(sidecars then watch the API server directly). Its ``/readyz`` and
``/metrics`` are read through the API server's service proxy, so one replica
answers: the subscriber count is that replica's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from shardmesh.check_cluster import ClusterError, api_error
from shardmesh.check_model import FAIL, OK, WARN, Finding, Obj

DEPLOYMENT = SERVICE = "shardmesh-directory"
WEBHOOK_DEPLOYMENT = "shardmesh-webhook"
CA_SECRET = "shardmesh-directory-certs"


@dataclass(frozen=True)
class Answer:
    status: int | None
    body: str


def metric(text: str, name: str) -> float | None:
    """The sum of a metric's samples in a Prometheus exposition (None when absent)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith((name + " ", name + "{"))]
    return sum(values) if values else None


def directory_findings(namespace: str, deployment: Obj | None, readyz: Answer | None,
                       metrics: Answer | None) -> list[Finding]:
    where = f"deployment {namespace}/{DEPLOYMENT}"
    if deployment is None:
        return []  # optional: nothing to report (sidecars watch the API server directly)
    wanted = int((deployment.get("spec") or {}).get("replicas", 1) or 0)
    ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
    findings = []
    hint = f"kubectl -n {namespace} describe deployment {DEPLOYMENT}"
    if ready == 0:
        findings.append(Finding(FAIL, "directory", f"{where}: 0 of {wanted} replicas ready",
                                (hint,)))
    elif ready < wanted:
        findings.append(Finding(WARN, "directory", f"{where}: {ready} of {wanted} replicas "
                                "ready", (hint,)))
    else:
        findings.append(Finding(OK, "directory", f"{where}: {ready} of {wanted} replicas ready"))
    if readyz is None or readyz.status != 200:
        said = "no answer" if readyz is None else f"{readyz.status} {readyz.body[:120]}"
        findings.append(Finding(FAIL, "directory", f"service {namespace}/{SERVICE} /readyz: "
                                f"{said}", (f"kubectl -n {namespace} logs deploy/{DEPLOYMENT}",)))
        return findings
    text = metrics.body if metrics is not None and metrics.status == 200 else ""
    subscribers = metric(text, "shardmesh_directory_subscribers")
    informers = metric(text, "shardmesh_directory_informers")
    counts = ("" if subscribers is None else
              f"; one replica serves {subscribers:g} subscribers with {informers or 0:g} "
              "informers")
    findings.append(Finding(OK, "directory", f"service {namespace}/{SERVICE} is reachable and "
                            f"ready{counts}"))
    return findings


def webhook_directory_url(webhook: Obj | None) -> str:
    """The --directory-url the webhook Deployment is given (flag or environment), or ""."""
    spec = ((webhook or {}).get("spec") or {}).get("template", {}).get("spec") or {}
    for container in spec.get("containers") or []:
        args = [str(a) for a in container.get("args") or []]
        for i, arg in enumerate(args):
            if arg.startswith("--directory-url="):
                return arg.split("=", 1)[1]
            if arg == "--directory-url" and i + 1 < len(args):
                return args[i + 1]
        for env in container.get("env") or []:
            if env.get("name") == "SHARDMESH_DIRECTORY_URL" and env.get("value"):
                return str(env["value"])
    return ""


def injection_findings(namespace: str, installed: bool, url: str,
                       ca_secret: bool | None) -> list[Finding]:
    """Whether new sidecars are injected to use the directory (SPEC §7)."""
    if not url:
        if not installed:
            return []
        return [Finding(WARN, "directory", f"deployment {namespace}/{WEBHOOK_DEPLOYMENT} has no "
                        "--directory-url: sidecars watch the API server directly, not the "
                        "installed directory", ("set SHARDMESH_DIRECTORY_URL and "
                                                "SHARDMESH_DIRECTORY_CA_FILE as "
                                                "manifests/base/webhook-deployment.yaml does",))]
    if ca_secret is False:
        return [Finding(WARN, "directory", f"secret {namespace}/{CA_SECRET} (the directory's "
                        "CA) does not exist: sidecars are injected to watch the API server "
                        "until the directory makes it", (f"kubectl -n {namespace} logs "
                                                         f"deploy/{DEPLOYMENT}",))]
    return [Finding(OK, "directory", f"sidecars are injected to use the directory at {url} "
                    "(shard.io/discovery: direct opts a pod out); a sidecar needs no RBAC for "
                    "its own namespace's maps, and shardmaps.shard.io for another's")]


def directory_section(api: client.ApiClient, namespace: str, timeout: float) -> list[Finding]:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    try:
        response: Any = apps.read_namespaced_deployment(DEPLOYMENT, namespace,
                                                        _preload_content=False,
                                                        _request_timeout=timeout)
    except ApiException as err:
        if err.status == 404:
            return directory_findings(namespace, None, None, None)
        raise ClusterError(f"reading deployment {namespace}/{DEPLOYMENT}: "
                           f"{api_error(err)}") from None
    import json

    deployment: Obj = json.loads(response.data)

    def get(path: str) -> Answer:
        try:
            answer: Any = core.connect_get_namespaced_service_proxy_with_path(
                f"https:{SERVICE}:443", namespace, path, _preload_content=False,
                _request_timeout=timeout)
        except ApiException as err:
            return Answer(err.status, api_error(err))
        return Answer(answer.status, answer.data.decode("utf-8", "replace"))

    return [*directory_findings(namespace, deployment, get("readyz"), get("metrics")),
            *injection_findings(namespace, True, webhook_directory_url(_read_webhook(
                apps, namespace, timeout)), _secret_exists(core, namespace, timeout))]


def injected_directory_url(api: client.ApiClient, namespace: str, timeout: float) -> str:
    """The directory the webhook injects sidecars to use ("" if none, or unreadable)."""
    return webhook_directory_url(_read_webhook(client.AppsV1Api(api), namespace, timeout))


def _read_webhook(apps: client.AppsV1Api, namespace: str, timeout: float) -> Obj | None:
    import json

    try:
        response: Any = apps.read_namespaced_deployment(WEBHOOK_DEPLOYMENT, namespace,
                                                        _preload_content=False,
                                                        _request_timeout=timeout)
    except ApiException:
        return None
    doc: Obj = json.loads(response.data)
    return doc


def _secret_exists(core: client.CoreV1Api, namespace: str, timeout: float) -> bool | None:
    """None when the checker may not read it."""
    try:
        core.read_namespaced_secret_with_http_info(CA_SECRET, namespace, _preload_content=False,
                                                   _request_timeout=timeout)
    except ApiException as err:
        return False if err.status == 404 else None
    return True
