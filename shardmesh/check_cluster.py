"""The Kubernetes API edge of ``shardmesh check``: fetch objects, ask questions.

Objects come back as plain JSON dicts in the API's wire form (camelCase,
``caBundle`` still base64), so the pure checks read exactly what
``kubectl get -o json`` shows. Nothing here decides anything.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from shardmesh.check_model import Obj
from shardmesh.check_probe import ProbeResult
from shardmesh.check_rbac import Permission, Requirement, alternatives, denied
from shardmesh.check_webhook import ServiceProbe, ServiceRef


class ClusterError(Exception):
    """An API call failed in a way the report should show (the message names the call)."""


def _json(response: Any) -> Any:
    return json.loads(response.data)


def api_error(err: ApiException) -> str:
    """The API server's own message when it sent a Status, else the HTTP reason."""
    try:
        status = json.loads(err.body or "")
        message = status.get("message") if isinstance(status, dict) else None
    except ValueError:
        message = (err.body or "").strip()[:200] or None
    return f"{err.status} {err.reason}: {message}" if message else f"{err.status} {err.reason}"


class Cluster:
    """Read-only queries (plus SubjectAccessReviews, which change nothing)."""

    def __init__(self, api: client.ApiClient, timeout: float = 10.0) -> None:
        self.core = client.CoreV1Api(api)
        self.admission = client.AdmissionregistrationV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.authz = client.AuthorizationV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.timeout = timeout

    def webhook_config(self, name: str) -> Obj | None:
        try:
            found: Obj = _json(self.admission.read_mutating_webhook_configuration(
                name, _preload_content=False, _request_timeout=self.timeout))
            return found
        except ApiException as err:
            if err.status == 404:
                return None
            raise ClusterError(f"reading MutatingWebhookConfiguration '{name}': "
                               f"{api_error(err)}") from None

    def namespaces(self, only: tuple[str, ...]) -> list[Obj]:
        if not only:
            return list(self._list("namespaces", self.core.list_namespace))
        found = []
        for name in only:
            try:
                found.append(_json(self.core.read_namespace(
                    name, _preload_content=False, _request_timeout=self.timeout)))
            except ApiException as err:
                if err.status != 404:
                    raise ClusterError(f"reading namespace '{name}': {api_error(err)}") from None
        return found

    def pods(self, only: tuple[str, ...]) -> list[Obj]:
        if not only:
            return list(self._list("pods", self.core.list_pod_for_all_namespaces))
        pods: list[Obj] = []
        for name in only:
            pods += self._list(f"pods in namespace '{name}'", self.core.list_namespaced_pod, name)
        return pods

    def statefulset(self, namespace: str, name: str) -> Obj | None:
        """The StatefulSet, None when absent; ValueError naming the call otherwise."""
        try:
            found: Obj = _json(client.AppsV1Api(self.core.api_client).read_namespaced_stateful_set(
                name, namespace, _preload_content=False, _request_timeout=self.timeout))
            return found
        except ApiException as err:
            if err.status == 404:
                return None
            raise ValueError(f"reading statefulset {namespace}/{name}: {api_error(err)}") from None

    def _list(self, what: str, method: Any, *args: str) -> list[Obj]:
        try:
            items: list[Obj] = _json(method(*args, _preload_content=False,
                                            _request_timeout=self.timeout))["items"]
        except ApiException as err:
            raise ClusterError(f"listing {what}: {api_error(err)}") from None
        return items

    def service_probe(self, ref: ServiceRef, timeout: float) -> ServiceProbe:
        """The Service, its ready endpoints, and ``/healthz`` through the service proxy."""
        try:
            self.core.read_namespaced_service(ref.name, ref.namespace, _preload_content=False,
                                              _request_timeout=self.timeout)
        except ApiException as err:
            if err.status == 404:
                return ServiceProbe(False, 0, ProbeResult(ref.proxy_path, error="no Service"))
            raise ClusterError(f"reading Service {ref}: {api_error(err)}") from None
        return ServiceProbe(True, self._ready_endpoints(ref), self._proxy_healthz(ref, timeout))

    def _ready_endpoints(self, ref: ServiceRef) -> int:
        slices = self._list(f"EndpointSlices of Service {ref}",
                            lambda ns, **kw: self.discovery.list_namespaced_endpoint_slice(
                                ns, label_selector=f"kubernetes.io/service-name={ref.name}", **kw),
                            ref.namespace)
        # An unset "ready" condition means ready (EndpointSlice API contract).
        return sum(1 for s in slices for e in s.get("endpoints") or []
                   if (e.get("conditions") or {}).get("ready") is not False)

    def _proxy_healthz(self, ref: ServiceRef, timeout: float) -> ProbeResult:
        try:
            response: Any = self.core.connect_get_namespaced_service_proxy_with_path(
                f"https:{ref.name}:{ref.port}", ref.namespace, "healthz",
                _preload_content=False, _request_timeout=timeout)
        except ApiException as err:
            return ProbeResult(ref.proxy_path, status=err.status, body=api_error(err))
        body = response.data.decode("utf-8", "replace").strip()[:512]
        return ProbeResult(ref.proxy_path, status=response.status, body=body)

    def clusterrole_exists(self, name: str) -> bool:
        try:
            self.rbac.read_cluster_role(name, _preload_content=False,
                                        _request_timeout=self.timeout)
        except ApiException as err:
            if err.status == 404:
                return False
            raise ClusterError(f"reading ClusterRole '{name}': {api_error(err)}") from None
        return True

    def denied(self, req: Requirement) -> tuple[Permission, ...]:
        """The permissions the API server's authorizer refuses this service account, as
        ``check_rbac.denied`` reports them. Fallback rights are asked only if needed."""
        allowed: dict[Permission, bool] = {}
        for option in alternatives(req):
            allowed |= {p: self._allowed(req, p) for p in option if p not in allowed}
            if all(allowed[p] for p in option):
                break
        return denied(req, allowed)

    def _allowed(self, req: Requirement, perm: Permission) -> bool:
        body = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
            user=req.user, groups=list(req.groups),
            resource_attributes=client.V1ResourceAttributes(
                namespace=req.target, verb=perm.verb, group=perm.group, resource=perm.resource)))
        try:
            review = _json(self.authz.create_subject_access_review(
                body, _preload_content=False, _request_timeout=self.timeout))
        except ApiException as err:
            raise ClusterError(f"SubjectAccessReview for {req.user}: {api_error(err)}") from None
        return bool(review.get("status", {}).get("allowed"))
