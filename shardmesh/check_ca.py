"""Pure checks of a webhook's ``caBundle`` and of the serving certificate it vouches for.

The API server trusts the webhook only through ``caBundle``: if it does not
parse, has expired, or does not sign what the webhook presents, every call
fails TLS and (with ``failurePolicy: Ignore``) pods quietly go uninjected.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from shardmesh.check_model import FAIL, OK, WARN, Finding

_DAY = 86400.0


@dataclass(frozen=True)
class Bundle:
    """A decoded caBundle: the PEM text and its certificates, or why it is unusable."""

    pem: bytes
    certs: tuple[x509.Certificate, ...]
    error: str = ""


def load_bundle(ca_bundle: str | None) -> Bundle:
    """Decode the base64 wire form of ``caBundle`` and parse its PEM certificates."""
    if not ca_bundle:
        return Bundle(b"", (), "caBundle is empty (the webhook has not patched it in yet?)")
    try:
        pem = base64.b64decode(ca_bundle, validate=True)
    except (binascii.Error, ValueError) as err:
        return Bundle(b"", (), f"caBundle is not valid base64: {err}")
    if b"PRIVATE KEY-----" in pem:
        return Bundle(pem, (), "caBundle contains a PRIVATE KEY; it must hold only certificates")
    try:
        certs = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError as err:
        return Bundle(pem, (), f"caBundle does not parse as PEM certificates: {err}")
    return Bundle(pem, certs)


def describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number:x}"


def days_left(cert: x509.Certificate, now: datetime) -> float:
    return (cert.not_valid_after_utc - now).total_seconds() / _DAY


def _until(cert: x509.Certificate, now: datetime) -> str:
    days = days_left(cert, now)
    date = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    if days < 0:
        return f"expired on {date} ({int(-days)} day(s) ago)"
    return f"valid until {date} ({int(days)} day(s) left)"


def bundle_findings(where: str, bundle: Bundle, now: datetime, warn_days: int) -> list[Finding]:
    """One finding for the bundle: parse errors and expiry, judged by its best certificate."""
    if bundle.error:
        return [Finding(FAIL, "ca-bundle", f"{where}: {bundle.error}")]
    if not bundle.certs:
        return [Finding(FAIL, "ca-bundle", f"{where}: caBundle holds no certificates")]
    current = [c for c in bundle.certs if c.not_valid_before_utc <= now < c.not_valid_after_utc]
    if not current:
        return [Finding(FAIL, "ca-bundle", f"{where}: no certificate in caBundle is valid now: "
                        + "; ".join(_validity(c, now) for c in bundle.certs))]
    # During a rotation the bundle holds old and new CAs; the longest-lived one counts.
    best = max(current, key=lambda c: c.not_valid_after_utc)
    message = f"{where}: caBundle {describe(best)} {_until(best, now)}"
    stale = [c for c in bundle.certs if c.not_valid_after_utc <= now]
    findings = []
    if days_left(best, now) < warn_days:
        findings.append(Finding(WARN, "ca-bundle",
                                f"{message}, under --expiry-warn-days={warn_days}",
                                ("renew the webhook's CA before it expires",)))
    else:
        findings.append(Finding(OK, "ca-bundle", f"{message}; {len(bundle.certs)} certificate(s)"))
    if stale:
        findings.append(Finding(WARN, "ca-bundle", f"{where}: caBundle still holds "
                                + "; ".join(f"{describe(c)} {_until(c, now)}" for c in stale)))
    return findings


def _validity(cert: x509.Certificate, now: datetime) -> str:
    if now < cert.not_valid_before_utc:
        start = cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M UTC")
        return f"{describe(cert)} is not valid before {start}"
    return f"{describe(cert)} {_until(cert, now)}"


@dataclass(frozen=True)
class Presented:
    """What a webhook's TLS endpoint showed: its leaf cert and how verification went."""

    #: The leaf certificate (DER), if the handshake got that far.
    leaf_der: bytes | None
    #: Empty when the chain verified against caBundle (and the host name matched).
    verify_error: str = ""


def serving_cert_finding(
    where: str, bundle: Bundle, presented: Presented, now: datetime, warn_days: int
) -> Finding:
    """Does the served certificate chain to caBundle, and how long is it good for?"""
    if presented.leaf_der is None:
        return Finding(FAIL, "serving-cert", f"{where}: no certificate was presented"
                       + (f" ({presented.verify_error})" if presented.verify_error else ""))
    leaf = x509.load_der_x509_certificate(presented.leaf_der)
    what = f"serving cert {describe(leaf)} (issuer {leaf.issuer.rfc4514_string()})"
    if presented.verify_error:
        cas = ", ".join(describe(c) for c in bundle.certs) or "none"
        return Finding(FAIL, "serving-cert", f"{where}: {what} does not verify against caBundle "
                       f"[{cas}]: {presented.verify_error}")
    if days_left(leaf, now) < warn_days:
        return Finding(WARN, "serving-cert", f"{where}: {what} chains to caBundle but is "
                       f"{_until(leaf, now)}, under --expiry-warn-days={warn_days}")
    return Finding(OK, "serving-cert", f"{where}: {what} chains to caBundle, {_until(leaf, now)}")
