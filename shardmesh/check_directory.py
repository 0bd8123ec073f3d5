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

    return directory_findings(namespace, deployment, get("readyz"), get("metrics"))
