"""Pure checks of the MutatingWebhookConfiguration: present, reachable, trusted.

``webhook_targets`` reads the configuration into what must be probed; the I/O
edge probes each target; ``webhook_findings`` judges the results. A webhook
reached by ``clientConfig.service`` is probed through the API server's service
proxy (which does not verify TLS), so only ``clientConfig.url`` webhooks get
the serving-certificate check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shardmesh.check_ca import Bundle, bundle_findings, load_bundle, serving_cert_finding
from shardmesh.check_model import FAIL, OK, Finding, Obj
from shardmesh.check_probe import ProbeResult

#: What the API server waits for a webhook when timeoutSeconds is unset.
DEFAULT_TIMEOUT_S = 10


@dataclass(frozen=True)
class ServiceRef:
    namespace: str
    name: str
    port: int
    path: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def proxy_path(self) -> str:
        """The API server's service-proxy path to this Service's ``/healthz``."""
        return (f"/api/v1/namespaces/{self.namespace}/services/"
                f"https:{self.name}:{self.port}/proxy/healthz")


@dataclass(frozen=True)
class WebhookTarget:
    """One entry of ``webhooks[]``, reduced to what the checks need."""

    name: str
    configuration: str
    url: str | None
    service: ServiceRef | None
    bundle: Bundle
    timeout_s: int

    @property
    def where(self) -> str:
        return f"webhook '{self.name}' of MutatingWebhookConfiguration '{self.configuration}'"


@dataclass(frozen=True)
class ServiceProbe:
    """What the API server knows about a service-backed webhook."""

    #: False when the Service does not exist.
    found: bool
    ready_endpoints: int
    #: ``GET .../proxy/healthz`` through the API server.
    proxy: ProbeResult


def webhook_targets(config: Obj) -> list[WebhookTarget]:
    name = str(config.get("metadata", {}).get("name", ""))
    targets = []
    for hook in config.get("webhooks") or []:
        client = hook.get("clientConfig") or {}
        service = client.get("service")
        ref = None
        if service:
            ref = ServiceRef(service.get("namespace", ""), service.get("name", ""),
                             int(service.get("port") or 443), service.get("path") or "")
        targets.append(WebhookTarget(
            name=str(hook.get("name", "")), configuration=name, url=client.get("url"),
            service=ref, bundle=load_bundle(client.get("caBundle")),
            timeout_s=int(hook.get("timeoutSeconds") or DEFAULT_TIMEOUT_S),
        ))
    return targets


def missing_config_finding(name: str) -> Finding:
    return Finding(FAIL, "webhook", f"MutatingWebhookConfiguration '{name}' not found: "
                   "no pod gets the shard-router sidecar",
                   ("install it: kubectl apply -k manifests/",
                    "or name yours with --webhook-config NAME"))


def webhook_findings(
    target: WebhookTarget,
    probe: ProbeResult | ServiceProbe,
    now: datetime,
    warn_days: int,
) -> list[Finding]:
    """Reachability, then the caBundle, then (URL webhooks) the served certificate."""
    if isinstance(probe, ServiceProbe):
        findings = _service_findings(target, probe)
    else:
        findings = [_url_finding(target, probe)]
    findings += bundle_findings(target.where, target.bundle, now, warn_days)
    if isinstance(probe, ProbeResult) and probe.presented and not target.bundle.error:
        findings.append(serving_cert_finding(target.where, target.bundle, probe.presented,
                                             now, warn_days))
    return findings


def no_client_finding(target: WebhookTarget) -> Finding:
    return Finding(FAIL, "webhook", f"{target.where}: clientConfig has neither url nor service")


def no_webhooks_finding(name: str) -> Finding:
    return Finding(FAIL, "webhook", f"MutatingWebhookConfiguration '{name}' has no webhooks")


def _url_finding(target: WebhookTarget, probe: ProbeResult) -> Finding:
    at = f"{target.where} at {target.url}"
    if probe.error:
        return Finding(FAIL, "webhook", f"{at} is unreachable: GET {probe.url}: {probe.error}",
                       ("is the webhook running and listening there?",))
    if probe.status != 200:
        return Finding(FAIL, "webhook", f"{at}: GET {probe.url} answered "
                       f"{probe.status}: {probe.body[:200]!r}")
    return Finding(OK, "webhook", f"{at}: GET {probe.url} answered 200")


def _service_findings(target: WebhookTarget, probe: ServiceProbe) -> list[Finding]:
    svc = target.service
    assert svc is not None
    if not probe.found:
        return [Finding(FAIL, "webhook", f"{target.where}: Service {svc} not found",
                        ("install it: kubectl apply -k manifests/",))]
    endpoints = (
        Finding(FAIL, "endpoints", f"{target.where}: Service {svc} has no ready endpoints",
                (f"kubectl get pods -n {svc.namespace}; kubectl describe service {svc.name} "
                 f"-n {svc.namespace}",))
        if probe.ready_endpoints == 0 else
        Finding(OK, "endpoints", f"{target.where}: Service {svc} has "
                f"{probe.ready_endpoints} ready endpoint(s)")
    )
    proxy = probe.proxy
    if proxy.error or proxy.status != 200:
        why = proxy.error or f"answered {proxy.status}: {proxy.body[:200]!r}"
        # Ready endpoints that the proxy cannot use: the causes seen in practice.
        hints = (() if probe.ready_endpoints == 0 else (
            "the Service's targetPort must be the webhook's --port (8443 in manifests/)",
            "a NetworkPolicy in the injector's namespace must let the API server in",
            "the service proxy only uses endpoints whose targetRef is a Pod with that "
            "address, on a port named like the Service's; hand-made EndpointSlices "
            "need both",
        ))
        reach = Finding(FAIL, "webhook", f"{target.where}: GET {svc.proxy_path} "
                        f"through the API server failed: {why}", hints)
    else:
        reach = Finding(OK, "webhook", f"{target.where}: Service {svc} port {svc.port} "
                        "answered /healthz through the API server")
    return [reach, endpoints]
