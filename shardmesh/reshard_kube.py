"""The I/O of ``shardmesh reshard``: read and write the StatefulSet, read pods, call handoffs.

Every write is a JSON merge patch that carries the resourceVersion it was
decided on, so the API server refuses it (409 Conflict, raised here as
``Conflict``) if anyone wrote the StatefulSet meanwhile; the caller then reads
again and decides again. Handoffs go through the API server's pod proxy, so the
command needs no network path to the pods, only RBAC for ``pods/proxy``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException


class Conflict(Exception):
    """The StatefulSet changed since it was read."""


class KubeError(RuntimeError):
    """An API call failed; the message names the object."""


@dataclass(frozen=True)
class StatefulSetView:
    name: str
    namespace: str
    annotations: Mapping[str, str]
    resource_version: str
    replicas: int
    start: int
    #: The first containerPort of the pod template, or None.
    port: int | None


@dataclass(frozen=True)
class PodView:
    name: str
    #: "" when the pod can serve: it exists, is Ready, is not terminating and has an IP.
    problem: str
    ip: str = ""


@dataclass(frozen=True)
class HandoffAnswer:
    status: int
    body: str


def load_client(kubeconfig: str | None) -> client.ApiClient:
    """From --kubeconfig or KUBECONFIG/~/.kube/config, else the in-cluster service account."""
    try:
        api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig)
        return api
    except (config.ConfigException, OSError) as err:
        if kubeconfig:
            raise KubeError(f"cannot load kubeconfig {kubeconfig}: {err}") from None
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            raise KubeError(f"no kubeconfig ({err}) and not in a cluster") from None
        return client.ApiClient()


def pod_problem(pod: Mapping[str, Any]) -> str:
    """Why a pod (as JSON) cannot take part in a handoff, or ""."""
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    if meta.get("deletionTimestamp"):
        return "it is terminating"
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [])
    if not ready:
        return "it is not Ready"
    if not status.get("podIP"):
        return "it has no pod IP"
    return ""


class Kube:
    """One StatefulSet and its pods, through one API client."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self.apps, self.core = client.AppsV1Api(api), client.CoreV1Api(api)

    def _json(self, response: Any) -> Any:
        return json.loads(response.data)

    def read(self) -> StatefulSetView:
        try:
            sts = self._json(self.apps.read_namespaced_stateful_set(
                self.name, self.namespace, _preload_content=False))
        except ApiException as err:
            if err.status == 404:
                raise KubeError(f"statefulset {self.name} not found in namespace "
                                f"{self.namespace}") from None
            raise KubeError(f"reading statefulset {self.namespace}/{self.name}: "
                            f"{err.status} {err.reason}") from None
        spec, meta = sts.get("spec", {}), sts["metadata"]
        ports = [p["containerPort"] for c in spec["template"]["spec"].get("containers", [])
                 for p in c.get("ports") or [] if "containerPort" in p]
        return StatefulSetView(self.name, self.namespace, meta.get("annotations") or {},
                               meta["resourceVersion"], int(spec.get("replicas", 1)),
                               int((spec.get("ordinals") or {}).get("start", 0)),
                               ports[0] if ports else None)

    def write(self, annotations: Mapping[str, str | None], resource_version: str) -> str:
        """Merge ``annotations`` (None removes one) if the StatefulSet is still at
        ``resource_version``; returns the new one. Raises Conflict otherwise."""
        body = {"metadata": {"resourceVersion": resource_version,
                             "annotations": dict(annotations)}}
        try:
            response = self.apps.patch_namespaced_stateful_set(
                self.name, self.namespace, body, _content_type="application/merge-patch+json",
                _preload_content=False)
        except ApiException as err:
            if err.status == 409:
                raise Conflict(f"statefulset {self.name} changed since resourceVersion "
                               f"{resource_version}") from None
            raise KubeError(f"patching statefulset {self.namespace}/{self.name}: "
                            f"{err.status} {err.reason} {err.body}") from None
        version: str = self._json(response)["metadata"]["resourceVersion"]
        return version

    def pod(self, ordinal: int) -> PodView:
        name = f"{self.name}-{ordinal}"
        try:
            pod = self._json(self.core.read_namespaced_pod(name, self.namespace,
                                                           _preload_content=False))
        except ApiException as err:
            if err.status == 404:
                return PodView(name, "it does not exist")
            raise KubeError(f"reading pod {self.namespace}/{name}: {err.status} "
                            f"{err.reason}") from None
        return PodView(name, pod_problem(pod), pod.get("status", {}).get("podIP") or "")

    def handoff(self, pod: str, port: int, body: Mapping[str, Any],
                timeout: float) -> HandoffAnswer:
        """``POST /_shard/handoff`` to ``pod:port`` through the API server's pod proxy."""
        path = f"/api/v1/namespaces/{self.namespace}/pods/{pod}:{port}/proxy/_shard/handoff"
        method, url, headers, data, post = self.api.param_serialize(
            method="POST", resource_path=path, body=dict(body), auth_settings=["BearerToken"],
            header_params={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            response = self.api.call_api(method, url, headers, data, post,
                                         _request_timeout=timeout)
            raw = response.read()  # type: ignore[no-untyped-call]
        except ApiException as err:
            return HandoffAnswer(err.status or 0, str(err.body or err.reason))
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return HandoffAnswer(response.status, text)
