"""The self-managed CA and serving certificate: generation and renewal, no I/O.

Design rules:
- One ``CertBundle`` is what the shared Secret holds: the current CA (cert and
  key), the serving certificate and key it signed, and the ``caBundle`` that
  the API server must trust (the current CA, plus the previous CA while it is
  still valid, so a rotation never leaves a replica serving a certificate that
  the API server does not trust).
- A certificate is renewed once less than a third of its lifetime is left;
  the CA is replaced on the same rule, and a new CA always comes with a new
  serving certificate.
- Keys are ECDSA P-256: small, fast handshakes, supported by the API server.
- A CA rotation can have an overlap (the directory's: its clients learn the CAs
  to trust from the directory itself, not from the API server). Then the next
  CA is first only *staged*: kept in the bundle's ``next_ca_*`` and added to
  ``ca_bundle`` while the serving certificate stays signed by the current CA;
  once the next CA is ``overlap`` old it is *promoted*: it signs a new serving
  certificate and becomes the current CA, the old one staying in ``ca_bundle``
  until it expires. With no overlap (the webhook: the API server's caBundle is
  patched before anything is served) both happen in one renewal.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RENEW_FRACTION = 1 / 3
#: Certificates start a little in the past so that clock skew between nodes
#: does not make a fresh certificate "not yet valid".
BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CertBundle:
    """PEM bytes, exactly as kept in the Secret."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes
    ca_bundle: bytes
    #: A staged next CA (cert and key; empty when none): trusted, not yet signing.
    next_ca_cert: bytes = b""
    next_ca_key: bytes = b""


def service_sans(service: str, namespace: str, extra: Sequence[str]) -> tuple[str, ...]:
    """The names the API server may use to reach the Service, plus ``extra``."""
    names = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
             f"{service}.{namespace}.svc.cluster.local"]
    return tuple(dict.fromkeys([*names, *extra]))


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def new_ca(now: dt.datetime, lifetime: dt.timedelta) -> tuple[bytes, bytes]:
    """A self-signed CA: (cert PEM, key PEM)."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"shardmesh-webhook-ca-{int(now.timestamp())}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert), _pem_key(key)


def new_serving(ca_cert: bytes, ca_key: bytes, sans: Sequence[str], now: dt.datetime,
                lifetime: dt.timedelta) -> tuple[bytes, bytes]:
    """A serving certificate for ``sans`` signed by the CA: (cert PEM, key PEM).
    It never outlives its CA."""
    ca = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey), "the CA key is not an EC key"
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + lifetime, ca.not_valid_after_utc))
        .add_extension(_san(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                       critical=False)
        .sign(signer, hashes.SHA256())
    )
    return _pem(cert), _pem_key(key)


def fresh(sans: Sequence[str], now: dt.datetime, cert_lifetime: dt.timedelta,
          ca_lifetime: dt.timedelta) -> CertBundle:
    ca_cert, ca_key = new_ca(now, ca_lifetime)
    cert, key = new_serving(ca_cert, ca_key, sans, now, cert_lifetime)
    return CertBundle(ca_cert, ca_key, cert, key, ca_cert)


def near_expiry(pem: bytes, now: dt.datetime) -> bool:
    """True once less than a third of the certificate's lifetime is left."""
    cert = x509.load_pem_x509_certificate(pem)
    # Lifetime from issue, not from the back-dated notBefore: otherwise a short
    # lifetime would always look nearly over.
    start, end = cert.not_valid_before_utc + BACKDATE, cert.not_valid_after_utc
    return end - now < (end - start) * RENEW_FRACTION


def sans_of(pem: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)}


def renewed(bundle: CertBundle, sans: Sequence[str], now: dt.datetime,
            cert_lifetime: dt.timedelta, ca_lifetime: dt.timedelta,
            overlap: dt.timedelta = dt.timedelta(0)) -> CertBundle | None:
    """The bundle to store instead of ``bundle``, or None when it is still good.

    A new CA keeps the old one in ``ca_bundle`` (while it is valid) so that the
    API server (or the directory's clients) trusts both the serving certificate
    still in use by replicas that have not reloaded yet and the new one. With an
    ``overlap``, the new CA is staged first and promoted ``overlap`` later.
    """
    if bundle.next_ca_cert and now - issued(bundle.next_ca_cert) >= overlap:
        return promoted(bundle, sans, now, cert_lifetime)
    result = bundle
    if not bundle.next_ca_cert and near_expiry(bundle.ca_cert, now):
        result = staged(bundle, now, ca_lifetime)
        if overlap <= dt.timedelta(0):
            return promoted(result, sans, now, cert_lifetime)
    if not near_expiry(result.cert, now) and set(sans) <= sans_of(result.cert):
        return None if result is bundle else result
    cert, key = new_serving(result.ca_cert, result.ca_key, sans, now, cert_lifetime)
    return dataclasses.replace(result, cert=cert, key=key)


def staged(bundle: CertBundle, now: dt.datetime, ca_lifetime: dt.timedelta) -> CertBundle:
    """``bundle`` with a new next CA, trusted (in ``ca_bundle``) but not signing yet."""
    ca_cert, ca_key = new_ca(now, ca_lifetime)
    return dataclasses.replace(bundle, next_ca_cert=ca_cert, next_ca_key=ca_key,
                               ca_bundle=trust_bundle(bundle.ca_cert, bundle.ca_bundle + ca_cert,
                                                      now))


def promoted(bundle: CertBundle, sans: Sequence[str], now: dt.datetime,
             cert_lifetime: dt.timedelta) -> CertBundle:
    """The staged next CA as the current one, with a serving certificate it signed;
    the old CA stays trusted until it expires. Raises ValueError when none is staged."""
    if not bundle.next_ca_cert:
        raise ValueError("no next CA is staged: nothing to promote")
    ca_cert, ca_key = bundle.next_ca_cert, bundle.next_ca_key
    cert, key = new_serving(ca_cert, ca_key, sans, now, cert_lifetime)
    return CertBundle(ca_cert, ca_key, cert, key, trust_bundle(ca_cert, bundle.ca_bundle, now))


def issued(pem: bytes) -> dt.datetime:
    """When a certificate of ours was made (its notBefore is back-dated by ``BACKDATE``)."""
    return x509.load_pem_x509_certificate(pem).not_valid_before_utc + BACKDATE


def trust_bundle(current_ca: bytes, previous_bundle: bytes, now: dt.datetime) -> bytes:
    """``current_ca`` followed by the still-valid CAs of the previous bundle."""
    keep = [current_ca]
    for cert in x509.load_pem_x509_certificates(previous_bundle):
        pem = _pem(cert)
        if cert.not_valid_after_utc > now and pem not in keep:
            keep.append(pem)
    return b"".join(keep)


def not_after(pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


def write_files(cert_pem: bytes, key_pem: bytes, cert_path: str, key_path: str) -> bool:
    """Atomically replace the files if their content differs; True when written.

    The key goes first: a reader that sees the new certificate with the old key
    fails to load and keeps its previous context until the next look.
    """
    changed = write_file(key_path, key_pem, 0o600)
    return write_file(cert_path, cert_pem, 0o644) or changed


def write_file(path: str, data: bytes, mode: int = 0o644) -> bool:
    """Atomically replace one file if its content differs; True when written."""
    import os

    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return True
