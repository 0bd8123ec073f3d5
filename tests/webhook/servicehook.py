"""The webhook as installed: registered by ``clientConfig.service`` and run at a pod's IP.

clusterhook registers the webhook by URL on 127.0.0.1, which no Service can
front (EndpointSlices refuse loopback addresses). Here the webhook keeps the
manifests' ``clientConfig.service`` and runs inside a network namespace
(tests/cluster/netns.py) whose address plays its pod's IP. The API server
(started with ``--enable-aggregator-routing``) resolves the Service to that
EndpointSlice address, and verifies the certificate for
``shardmesh-webhook.<namespace>.svc``, which the webhook's self-managed
certificate names.

No kubelet or EndpointSlice controller runs here, so this module writes what
they would: the webhook's Pod, Running with that IP (the service proxy only
proxies to an endpoint whose ``targetRef`` is a pod with that IP), the
manifests' Service without its selector, and an EndpointSlice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.cluster import netns
from tests.cluster.controlplane import ControlPlane
from tests.cluster.podstatus import running_status_patch
from tests.webhook import clusterhook, serving
from tests.webhook.clusterhook import MANIFESTS, Registration

PORT = 8443  # the Deployment's containerPort, which the Service's targetPort names
POD = "shardmesh-webhook-0"


@dataclass
class ServiceWebhook:
    api: client.ApiClient
    reg: Registration
    hook: serving.Webhook
    network: netns.PodNetwork
    service: dict[str, Any]


def manifest_service(namespace: str) -> dict[str, Any]:
    """manifests/base/webhook-service.yaml in ``namespace``, without its selector."""
    service: dict[str, Any] = yaml.safe_load(
        (MANIFESTS / "base" / "webhook-service.yaml").read_text())
    service["metadata"]["namespace"] = namespace
    del service["spec"]["selector"]  # no controller here would write its EndpointSlices
    return service


def expose(api: client.ApiClient, service: dict[str, Any], pod_ip: str) -> None:
    """The webhook's Pod (Running, Ready, at ``pod_ip``), its Service and EndpointSlice."""
    meta = service["metadata"]
    core, ns = client.CoreV1Api(api), meta["namespace"]
    pod = {"metadata": {"name": POD, "labels": meta["labels"]},
           "spec": {"serviceAccountName": "shardmesh-webhook", "containers": [{
               "name": "webhook", "image": "shardmesh",
               "ports": [{"name": "https", "containerPort": PORT}]}]}}
    uid = core.create_namespaced_pod(ns, pod).metadata.uid
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    core.patch_namespaced_pod_status(POD, ns, running_status_patch(pod, pod_ip, True, now))
    core.create_namespaced_service(ns, service)
    [port] = service["spec"]["ports"]
    client.DiscoveryV1Api(api).create_namespaced_endpoint_slice(ns, {
        "metadata": {"name": f"{meta['name']}-1",
                     "labels": {"kubernetes.io/service-name": meta["name"]}},
        "addressType": "IPv4",
        "ports": [{"name": port["name"], "port": PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [pod_ip], "conditions": {"ready": True},
                       "targetRef": {"kind": "Pod", "namespace": ns, "name": POD, "uid": uid}}],
    })


def failed_calls(control_plane: ControlPlane) -> list[str]:
    """kube-apiserver's last complaints about calling a webhook: with failurePolicy
    Ignore, the only trace of a webhook it could not reach (or did not trust)."""
    log = control_plane.logs()["kube-apiserver"].read_text(errors="replace")
    return [line for line in log.splitlines() if "Failed calling webhook" in line][-3:]


@contextlib.contextmanager
def webhook_behind_service(control_plane: ControlPlane, tmp: Path) -> Iterator[ServiceWebhook]:
    """Register, start and expose the webhook; undo all of it on exit."""
    api = control_plane.api_client()
    with netns.pod_network() as net, \
            netns.TcpRelay(net.host_ip, ("127.0.0.1", control_plane.port), net.pod_ip) as relay:
        reg = clusterhook.register(api, PORT, via_service=True)
        try:
            kubeconfig = clusterhook.service_account_kubeconfig(
                api, reg, control_plane.kubeconfig, tmp / "webhook.kubeconfig",
                server=f"https://{net.host_ip}:{relay.port}")
            service = manifest_service(reg.injector_namespace)
            expose(api, service, net.pod_ip)
            args = reg.webhook_args(kubeconfig, tmp / "certs", [
                "--service-name", service["metadata"]["name"], "--extra-san", net.pod_ip])
            hook = serving.start(args, tmp / "webhook.log", port=PORT, host=net.pod_ip,
                                 prefix=net.exec_prefix)
            try:
                clusterhook.wait_until_trusted(api, reg)
                yield ServiceWebhook(api, reg, hook, net, service)
            finally:
                hook.stop()
        finally:
            clusterhook.unregister(api, reg)
