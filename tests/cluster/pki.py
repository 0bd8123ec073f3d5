"""The certificates and keys of one throw-away control plane.

Rule: everything is generated fresh per test session and lives only in the
session's temp dir. ECDSA P-256 throughout: it is accepted by every component
(TLS, client certs, service-account token signing) and is much faster to
generate than RSA.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=2)
# Every name a client might use for the apiserver, in or out of the "cluster".
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Files written by :func:`write_pki`."""

    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    sa_private: Path
    sa_public: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
             ) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _make_ca(directory: Path) -> tuple[KeyPair, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = _name("shardmesh-test-ca")
    cert = (
        _builder(name, name, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pair = KeyPair(_write_cert(cert, directory / "ca.crt"), _write_key(key, directory / "ca.key"))
    return pair, cert, key


def _make_leaf(
    directory: Path,
    stem: str,
    subject: x509.Name,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> KeyPair:
    key = _key()
    builder = (
        _builder(subject, ca_cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(
        _write_cert(cert, directory / f"{stem}.crt"), _write_key(key, directory / f"{stem}.key")
    )


def apiserver_sans(service_ip: str) -> list[x509.GeneralName]:
    """127.0.0.1, ::1, the in-cluster service IP and the usual DNS names."""
    ips = ["127.0.0.1", "::1", service_ip]
    return [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips] + [
        x509.DNSName(name) for name in APISERVER_DNS_NAMES
    ]


def write_pki(directory: Path, service_ip: str) -> Pki:
    """Generate the CA, serving/client certificates and the service-account keys."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_cert, ca_key = _make_ca(directory)
    server = ExtendedKeyUsageOID.SERVER_AUTH
    client = ExtendedKeyUsageOID.CLIENT_AUTH
    apiserver = _make_leaf(directory, "apiserver", _name("kube-apiserver"), ca_cert, ca_key,
                           server, apiserver_sans(service_ip))
    admin = _make_leaf(directory, "admin", _name("shardmesh-admin", "system:masters"),
                       ca_cert, ca_key, client)
    controller_manager = _make_leaf(directory, "controller-manager",
                                    _name("system:kube-controller-manager"), ca_cert, ca_key,
                                    client)
    sa_key = _key()
    sa_private = _write_key(sa_key, directory / "sa.key")
    sa_public = directory / "sa.pub"
    sa_public.write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ))
    return Pki(ca, apiserver, admin, controller_manager, sa_private, sa_public)


def issue_client_cert(ca: KeyPair, directory: Path, stem: str, user: str,
                      group: str | None = None) -> KeyPair:
    """One more client certificate (e.g. a kubelet's ``system:node:<name>``) from a written CA."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    return _make_leaf(directory, stem, _name(user, group) if group else _name(user),
                      ca_cert, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH)
