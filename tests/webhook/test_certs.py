"""Self-managed certificates: generation, renewal and CA rotation (pure, no cluster)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from webhook import certs

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
SANS = certs.service_sans("shardmesh-webhook", "shardmesh-system", ["127.0.0.1"])


@pytest.fixture(scope="module")
def bundle() -> certs.CertBundle:
    return certs.fresh(SANS, T0, cert_lifetime=30 * DAY, ca_lifetime=90 * DAY)


def verify(cert_pem: bytes, ca_pem: bytes) -> None:
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(ca_pem)
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    cert.verify_directly_issued_by(ca)


def test_service_names_and_extra_sans(bundle: certs.CertBundle) -> None:
    assert certs.sans_of(bundle.cert) == {
        "shardmesh-webhook", "shardmesh-webhook.shardmesh-system",
        "shardmesh-webhook.shardmesh-system.svc",
        "shardmesh-webhook.shardmesh-system.svc.cluster.local", "127.0.0.1",
    }
    verify(bundle.cert, bundle.ca_cert)
    assert bundle.ca_bundle == bundle.ca_cert


@pytest.mark.parametrize(
    ("age", "renew"),
    [
        pytest.param(DAY, False, id="young"),
        pytest.param(19 * DAY, False, id="just-under-two-thirds"),
        pytest.param(21 * DAY, True, id="last-third"),
        pytest.param(31 * DAY, True, id="expired"),
    ],
)
def test_serving_cert_renews_in_its_last_third(bundle: certs.CertBundle, age: dt.timedelta,
                                               renew: bool) -> None:
    result = certs.renewed(bundle, SANS, T0 + age, 30 * DAY, 90 * DAY)
    assert (result is not None) is renew
    if result is not None:
        assert result.ca_cert == bundle.ca_cert, "a serving renewal keeps the CA"
        assert result.cert != bundle.cert
        verify(result.cert, bundle.ca_cert)


def test_new_san_reissues(bundle: certs.CertBundle) -> None:
    result = certs.renewed(bundle, [*SANS, "webhook.example"], T0, 30 * DAY, 90 * DAY)
    assert result is not None and "webhook.example" in certs.sans_of(result.cert)


def test_ca_rotation_keeps_the_old_ca_trusted(bundle: certs.CertBundle) -> None:
    later = T0 + 61 * DAY
    result = certs.renewed(bundle, SANS, later, 30 * DAY, 90 * DAY)
    assert result is not None and result.ca_cert != bundle.ca_cert
    trusted = x509.load_pem_x509_certificates(result.ca_bundle)
    assert [c.subject for c in trusted][1] == x509.load_pem_x509_certificate(bundle.ca_cert).subject
    verify(result.cert, result.ca_cert)
    # Once the old CA has expired it leaves the bundle.
    final = certs.trust_bundle(result.ca_cert, result.ca_bundle, T0 + 91 * DAY)
    assert final == result.ca_cert


def test_serving_cert_never_outlives_its_ca() -> None:
    bundle = certs.fresh(SANS, T0, cert_lifetime=30 * DAY, ca_lifetime=10 * DAY)
    assert certs.not_after(bundle.cert) == certs.not_after(bundle.ca_cert)


def test_write_files_only_when_changed(tmp_path: object, bundle: certs.CertBundle) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    cert, key = str(base / "tls.crt"), str(base / "tls.key")
    assert certs.write_files(bundle.cert, bundle.key, cert, key) is True
    assert certs.write_files(bundle.cert, bundle.key, cert, key) is False
    assert (base / "tls.key").stat().st_mode & 0o777 == 0o600
