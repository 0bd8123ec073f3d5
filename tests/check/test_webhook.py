"""Reading the MutatingWebhookConfiguration and judging probe results: pure."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from shardmesh.check_ca import Presented
from shardmesh.check_model import Finding
from shardmesh.check_probe import ProbeResult
from shardmesh.check_webhook import (
    ServiceProbe,
    missing_config_finding,
    webhook_findings,
    webhook_targets,
)
from tests.check.tls import Issued, b64, make_ca, make_leaf, now


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


def config(*hooks: dict[str, Any], name: str = "cfg") -> dict[str, Any]:
    return {"metadata": {"name": name}, "webhooks": list(hooks)}


def url_hook(ca: Issued, url: str = "https://127.0.0.1:8443/mutate",
             **extra: Any) -> dict[str, Any]:
    client = {"url": url, "caBundle": b64(ca.pem)}
    return {"name": "inject.shard.io", "clientConfig": client, **extra}


def by_check(findings: list[Finding]) -> dict[str, str]:
    return {f.check: f.status for f in findings}


def test_targets_read_url_service_and_defaults(ca: Issued) -> None:
    service = {"name": "svc.shard.io", "clientConfig": {
        "service": {"namespace": "shardmesh-system", "name": "shardmesh-webhook"}}}
    [url, svc] = webhook_targets(config(url_hook(ca, timeoutSeconds=3), service))
    assert (url.name, url.url, url.service, url.timeout_s) == (
        "inject.shard.io", "https://127.0.0.1:8443/mutate", None, 3)
    assert url.bundle.certs and not url.bundle.error
    assert svc.service is not None and svc.url is None and svc.timeout_s == 10
    assert (svc.service.namespace, svc.service.name, svc.service.port) == (
        "shardmesh-system", "shardmesh-webhook", 443)
    assert svc.service.proxy_path == ("/api/v1/namespaces/shardmesh-system/services/"
                                      "https:shardmesh-webhook:443/proxy/healthz")
    assert svc.bundle.error  # no caBundle at all
    assert svc.where == "webhook 'svc.shard.io' of MutatingWebhookConfiguration 'cfg'"


def test_missing_configuration_names_it_and_how_to_install() -> None:
    finding = missing_config_finding("shardmesh-sidecar-injector")
    assert finding.status == "FAIL" and "'shardmesh-sidecar-injector' not found" in finding.message
    assert any("kubectl apply -k manifests/" in h for h in finding.hints)


def _healthy(ca: Issued) -> ProbeResult:
    der = make_leaf(ca).cert.public_bytes(serialization.Encoding.DER)
    return ProbeResult("https://127.0.0.1:8443/healthz", status=200, body="ok",
                       presented=Presented(der))


@pytest.mark.parametrize(("result", "expected"), [
    pytest.param(lambda ca: _healthy(ca),
                 {"webhook": "OK", "ca-bundle": "OK", "serving-cert": "OK"}, id="all-good"),
    pytest.param(lambda ca: ProbeResult("https://127.0.0.1:1/healthz", error="connection refused"),
                 {"webhook": "FAIL", "ca-bundle": "OK"}, id="refused-no-cert-check"),
    pytest.param(lambda ca: ProbeResult("u", status=500, body="boom",
                                        presented=_healthy(ca).presented),
                 {"webhook": "FAIL", "ca-bundle": "OK", "serving-cert": "OK"}, id="unhealthy"),
    pytest.param(lambda ca: ProbeResult("u", status=200, presented=Presented(
        _healthy(ca).presented.leaf_der, "certificate verify failed")),  # type: ignore[union-attr]
                 {"webhook": "OK", "ca-bundle": "OK", "serving-cert": "FAIL"}, id="untrusted"),
])
def test_url_webhook_verdicts(ca: Issued, result, expected: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    [target] = webhook_targets(config(url_hook(ca)))
    findings = webhook_findings(target, result(ca), now(), 30)
    assert by_check(findings) == expected
    assert all("webhook 'inject.shard.io'" in f.message for f in findings)


def test_refused_message_names_url_and_reason(ca: Issued) -> None:
    [target] = webhook_targets(config(url_hook(ca, "https://127.0.0.1:1/mutate")))
    result = ProbeResult("https://127.0.0.1:1/healthz", error="connection refused")
    [reach, _] = webhook_findings(target, result, now(), 30)
    assert "https://127.0.0.1:1/mutate is unreachable" in reach.message
    assert "connection refused" in reach.message


def test_bad_bundle_skips_the_serving_cert_verdict(ca: Issued) -> None:
    hook = url_hook(ca)
    hook["clientConfig"]["caBundle"] = b64(b"garbage")
    [target] = webhook_targets(config(hook))
    findings = webhook_findings(target, _healthy(ca), now(), 30)
    assert by_check(findings) == {"webhook": "OK", "ca-bundle": "FAIL"}


SERVICE_HOOK = {"name": "svc.shard.io", "clientConfig": {
    "service": {"namespace": "sm", "name": "hook", "port": 8443}}}


@pytest.mark.parametrize(("probe", "expected", "needle"), [
    pytest.param(ServiceProbe(True, 2, ProbeResult("p", status=200, body="ok")),
                 {"webhook": "OK", "endpoints": "OK"}, "2 ready endpoint(s)", id="healthy"),
    pytest.param(ServiceProbe(True, 0, ProbeResult("p", status=503, body="no endpoints")),
                 {"webhook": "FAIL", "endpoints": "FAIL"}, "no ready endpoints", id="no-endpoints"),
    pytest.param(ServiceProbe(True, 1, ProbeResult("p", status=503, body="no endpoints")),
                 {"webhook": "FAIL", "endpoints": "OK"}, "a NetworkPolicy",
                 id="unusable-endpoints"),
    pytest.param(ServiceProbe(False, 0, ProbeResult("p", error="no Service")),
                 {"webhook": "FAIL"}, "Service sm/hook not found", id="no-service"),
])
def test_service_webhook_verdicts(ca: Issued, probe: ServiceProbe, expected: dict[str, str],
                                  needle: str) -> None:
    hook = {**SERVICE_HOOK, "clientConfig": {**SERVICE_HOOK["clientConfig"],  # type: ignore[dict-item]
                                             "caBundle": b64(ca.pem)}}
    [target] = webhook_targets(config(hook))
    findings = webhook_findings(target, probe, now(), 30)
    assert by_check(findings) == {**expected, "ca-bundle": "OK"}
    assert any(needle in f.message or any(needle in h for h in f.hints) for f in findings)
