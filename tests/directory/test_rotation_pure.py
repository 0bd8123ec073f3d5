"""The directory's CA rotation, without a cluster: the overlap in ``webhook.certs``, the
Secret's optional fields, the settings' check, the directory's trust file and what the
sidecar makes of a ``trust`` line or a failed handshake (``directory_link``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from directory.settings import load
from directory.trust import Trust
from sidecar import directory_link as dl
from sidecar.directory_source import Trust as SidecarTrust
from webhook import certs
from webhook.certstore import from_secret_data, to_secret_data

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
SANS = certs.service_sans("shardmesh-directory", "shardmesh-system", ["127.0.0.1"])
CA_LIFE, CERT_LIFE, OVERLAP = 90 * DAY, 30 * DAY, 7 * DAY


def issuer_of(cert: bytes) -> x509.Name:
    return x509.load_pem_x509_certificate(cert).issuer


def subject_of(cert: bytes) -> x509.Name:
    return x509.load_pem_x509_certificate(cert).subject


@pytest.fixture(scope="module")
def bundle() -> certs.CertBundle:
    return certs.fresh(SANS, T0, CERT_LIFE, CA_LIFE)


def test_the_next_ca_is_trusted_first_and_signs_only_after_the_overlap(
    bundle: certs.CertBundle,
) -> None:
    # A third of the CA's life left: the next CA is staged, not signing.
    first = certs.renewed(bundle, SANS, T0 + 61 * DAY, CERT_LIFE, CA_LIFE, OVERLAP)
    assert first is not None and first.next_ca_cert and first.ca_cert == bundle.ca_cert
    assert issuer_of(first.cert) == subject_of(bundle.ca_cert)
    trusted = [subject_of(c.public_bytes(certs.serialization.Encoding.PEM))
               for c in x509.load_pem_x509_certificates(first.ca_bundle)]
    assert trusted == [subject_of(bundle.ca_cert), subject_of(first.next_ca_cert)]
    # Within the overlap nothing changes (the serving certificate is still young).
    assert certs.renewed(first, SANS, T0 + 62 * DAY, CERT_LIFE, CA_LIFE, OVERLAP) is None
    # After it: the next CA signs, the old one stays trusted until it expires.
    second = certs.renewed(first, SANS, T0 + 68 * DAY, CERT_LIFE, CA_LIFE, OVERLAP)
    assert second is not None and second.ca_cert == first.next_ca_cert
    assert second.next_ca_cert == b"" and issuer_of(second.cert) == subject_of(second.ca_cert)
    assert second.ca_bundle == second.ca_cert + bundle.ca_cert
    assert certs.trust_bundle(second.ca_cert, second.ca_bundle, T0 + 91 * DAY) == second.ca_cert


def test_without_an_overlap_the_ca_is_replaced_at_once_as_for_the_webhook(
    bundle: certs.CertBundle,
) -> None:
    result = certs.renewed(bundle, SANS, T0 + 61 * DAY, CERT_LIFE, CA_LIFE)
    assert result is not None and result.next_ca_cert == b""
    assert result.ca_cert != bundle.ca_cert and issuer_of(result.cert) == subject_of(result.ca_cert)
    assert result.ca_bundle == result.ca_cert + bundle.ca_cert


def test_a_serving_renewal_during_the_overlap_keeps_the_staged_ca(
    bundle: certs.CertBundle,
) -> None:
    first = certs.staged(bundle, T0 + 10 * DAY, CA_LIFE)
    later = certs.renewed(first, SANS, T0 + 21 * DAY, CERT_LIFE, CA_LIFE, 30 * DAY)
    assert later is not None and later.cert != first.cert
    assert (later.ca_cert, later.next_ca_cert, later.ca_bundle) == \
        (first.ca_cert, first.next_ca_cert, first.ca_bundle)
    assert issuer_of(later.cert) == subject_of(bundle.ca_cert)


def test_promoting_needs_a_staged_ca(bundle: certs.CertBundle) -> None:
    with pytest.raises(ValueError, match="no next CA is staged"):
        certs.promoted(bundle, SANS, T0, CERT_LIFE)


def test_the_secret_holds_the_next_ca_only_while_one_is_staged(
    bundle: certs.CertBundle,
) -> None:
    assert "next-ca.crt" not in to_secret_data(bundle)
    assert from_secret_data(to_secret_data(bundle)) == bundle  # a Secret of before
    first = certs.staged(bundle, T0, CA_LIFE)
    data = to_secret_data(first)
    assert {"next-ca.crt", "next-ca.key"} <= set(data)
    assert from_secret_data(data) == first


@pytest.mark.parametrize(("argv", "problem"), [
    pytest.param(["--ca-overlap-s", "-1"], "--ca-overlap-s is -1", id="negative"),
    pytest.param(["--ca-lifetime-s", "300", "--ca-overlap-s", "100"],
                 "under a third of --ca-lifetime-s", id="past-the-renewal"),
])
def test_the_overlap_must_fit_in_the_cas_last_third(argv: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        load(argv, {})
    assert load(["--ca-lifetime-s", "300", "--ca-overlap-s", "99"], {}).ca_overlap_s == 99


def test_the_directory_sends_the_last_good_bundle(tmp_path: Path,
                                                  bundle: certs.CertBundle) -> None:
    path = tmp_path / "ca-bundle.crt"
    trust = Trust(str(path))
    assert trust.reload() is False and trust.pem == ""  # no file yet
    path.write_bytes(bundle.ca_bundle)
    assert trust.reload() is True and trust.describe()["cas"] == 1
    version = trust.version
    path.write_bytes(b"half-written")
    assert trust.reload() is False and trust.version == version
    assert trust.pem == bundle.ca_bundle.decode()


def test_the_sidecar_learns_a_bundle_and_names_a_mismatch(bundle: certs.CertBundle) -> None:
    assert dl.trust_of({"type": "heartbeat", "trust": "PEM"}) == "PEM"
    assert dl.trust_of({"type": "heartbeat"}) is None and dl.trust_of({"trust": 3}) is None
    why = dl.ca_mismatch("https://d:8443", "unable to get local issuer certificate", 1)
    assert why.startswith("https://d:8443: CA mismatch") and "restart the pod" in why
    sidecar = SidecarTrust(bundle.ca_cert.decode())
    assert sidecar.cas == 1
    sidecar.learn("not a certificate")
    assert sidecar.cas == 1 and sidecar.learned == ""  # kept what it had
    staged = certs.staged(bundle, T0, CA_LIFE)
    sidecar.learn(staged.ca_bundle.decode())
    assert sidecar.cas == 2
