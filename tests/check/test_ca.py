"""caBundle parsing and expiry, and the serving-cert verdict: pure, no network."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization

from shardmesh.check_ca import Presented, bundle_findings, load_bundle, serving_cert_finding
from shardmesh.check_model import Finding
from tests.check.tls import DAY, Issued, b64, make_ca, make_leaf, now

WHERE = "webhook 'inject.shard.io' of MutatingWebhookConfiguration 'cfg'"


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


def statuses(findings: list[Finding]) -> list[str]:
    return [f.status for f in findings]


@pytest.mark.parametrize(("bundle", "needle"), [
    pytest.param(None, "caBundle is empty", id="missing"),
    pytest.param("", "caBundle is empty", id="empty-string"),
    pytest.param("!!not base64!!", "not valid base64", id="not-base64"),
    pytest.param(base64.b64encode(b"hello world").decode(), "does not parse as PEM", id="not-pem"),
    pytest.param(base64.b64encode(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                 .decode(), "does not parse as PEM", id="broken-pem-body"),
])
def test_unusable_bundle_fails_naming_the_webhook(bundle: str | None, needle: str) -> None:
    findings = bundle_findings(WHERE, load_bundle(bundle), now(), 30)
    assert statuses(findings) == ["FAIL"]
    assert needle in findings[0].message and WHERE in findings[0].message


def test_private_key_in_bundle_fails(ca: Issued) -> None:
    key = ca.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    findings = bundle_findings(WHERE, load_bundle(b64(ca.pem, key)), now(), 30)
    assert statuses(findings) == ["FAIL"] and "PRIVATE KEY" in findings[0].message


@pytest.mark.parametrize(("days_left", "warn_days", "expected"), [
    pytest.param(365, 30, "OK", id="a-year-left"),
    pytest.param(10, 30, "WARN", id="10-days-under-30"),
    pytest.param(10, 5, "OK", id="10-days-over-5"),
    pytest.param(-2, 30, "FAIL", id="expired"),
])
def test_expiry_verdict(days_left: int, warn_days: int, expected: str) -> None:
    ca = make_ca(not_before=now() - 400 * DAY, not_after=now() + days_left * DAY)
    findings = bundle_findings(WHERE, load_bundle(b64(ca.pem)), now(), warn_days)
    assert statuses(findings) == [expected]
    message = findings[0].message
    assert "CN=shardmesh-test-ca" in message
    assert ("expired on" in message) == (days_left < 0)
    assert (f"--expiry-warn-days={warn_days}" in message) == (expected == "WARN")


def test_days_left_is_reported() -> None:
    ca = make_ca(not_after=now() + 100 * DAY + DAY / 2)
    [finding] = bundle_findings(WHERE, load_bundle(b64(ca.pem)), now(), 30)
    assert "(100 day(s) left)" in finding.message


def test_not_yet_valid_fails() -> None:
    ca = make_ca(not_before=now() + 3 * DAY)
    [finding] = bundle_findings(WHERE, load_bundle(b64(ca.pem)), now(), 30)
    assert finding.status == "FAIL" and "not valid before" in finding.message


def test_rotation_bundle_judged_by_its_newest_ca_and_warns_about_the_stale_one() -> None:
    old = make_ca("old-ca", not_before=now() - 400 * DAY, not_after=now() - DAY)
    new = make_ca("new-ca")
    findings = bundle_findings(WHERE, load_bundle(b64(old.pem, new.pem)), now(), 30)
    assert statuses(findings) == ["OK", "WARN"]
    assert "CN=new-ca" in findings[0].message
    assert "CN=old-ca" in findings[1].message and "expired" in findings[1].message


def test_served_cert_that_verified_is_ok(ca: Issued) -> None:
    leaf = make_leaf(ca)
    der = leaf.cert.public_bytes(serialization.Encoding.DER)
    finding = serving_cert_finding(WHERE, load_bundle(b64(ca.pem)), Presented(der), now(), 30)
    assert finding.status == "OK" and "chains to caBundle" in finding.message


def test_served_cert_that_did_not_verify_fails_naming_both_sides(ca: Issued) -> None:
    other = make_ca("some-other-ca")
    der = make_leaf(other).cert.public_bytes(serialization.Encoding.DER)
    presented = Presented(der, "unable to get local issuer certificate")
    finding = serving_cert_finding(WHERE, load_bundle(b64(ca.pem)), presented, now(), 30)
    assert finding.status == "FAIL"
    assert "CN=some-other-ca" in finding.message  # the issuer of what was served
    assert "[CN=shardmesh-test-ca]" in finding.message  # what caBundle trusts
    assert "unable to get local issuer certificate" in finding.message


def test_served_cert_near_expiry_warns(ca: Issued) -> None:
    der = make_leaf(ca, not_after=now() + 3 * DAY).cert.public_bytes(serialization.Encoding.DER)
    finding = serving_cert_finding(WHERE, load_bundle(b64(ca.pem)), Presented(der), now(), 30)
    assert finding.status == "WARN"


def test_no_served_cert_fails(ca: Issued) -> None:
    finding = serving_cert_finding(WHERE, load_bundle(b64(ca.pem)), Presented(None, "x"), now(), 30)
    assert finding.status == "FAIL"
