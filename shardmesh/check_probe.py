"""The network edge for ``clientConfig.url`` webhooks: a TLS ``GET /healthz``.

The probe trusts only the webhook's ``caBundle``, as the API server does, and
like Go's crypto/x509 it ignores the certificate's CN (only SANs name a host).
When that verification fails it connects a second time without verifying, so
the report can still say whether the server is up and what it presented.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from shardmesh.check_ca import Presented


@dataclass(frozen=True)
class ProbeResult:
    """What ``GET https://<host>:<port>/healthz`` gave."""

    url: str
    #: Why no HTTP answer came (refused, timeout, TLS failure); empty if one did.
    error: str = ""
    status: int | None = None
    body: str = ""
    #: The TLS side: what was presented and whether it verified. None if unknown.
    presented: Presented | None = None


def healthz_url(webhook_url: str) -> tuple[str, int, str]:
    """``(host, port, https://host:port/healthz)`` for a webhook URL; ValueError if unusable."""
    parts = urlsplit(webhook_url)
    if parts.scheme != "https":
        raise ValueError(f"webhook URL '{webhook_url}' is not https")
    try:
        host, port = parts.hostname, parts.port or 443
    except ValueError as err:
        raise ValueError(f"webhook URL '{webhook_url}' has a bad port: {err}") from None
    if not host:
        raise ValueError(f"webhook URL '{webhook_url}' has no host")
    shown = f"[{host}]" if ":" in host else host
    return host, port, f"https://{shown}:{port}/healthz"


def probe(webhook_url: str, ca_pem: bytes | None, timeout: float) -> ProbeResult:
    """Probe the webhook's ``/healthz``, verifying against ``ca_pem`` when given."""
    try:
        host, port, url = healthz_url(webhook_url)
    except ValueError as err:
        return ProbeResult(webhook_url, error=str(err))
    if ca_pem:
        try:
            return _get(url, host, port, _verifying_context(ca_pem), timeout)
        except ssl.SSLCertVerificationError as err:
            unverified = _attempt(url, host, port, _trusting_context(), timeout)
            leaf = unverified.presented.leaf_der if unverified.presented else None
            why = err.verify_message or str(err)
            return ProbeResult(url, unverified.error, unverified.status, unverified.body,
                               Presented(leaf, why))
        except (OSError, http.client.HTTPException) as err:
            return ProbeResult(url, error=_explain(err, timeout))
    return _attempt(url, host, port, _trusting_context(), timeout)


def _attempt(url: str, host: str, port: int, ctx: ssl.SSLContext, timeout: float) -> ProbeResult:
    try:
        return _get(url, host, port, ctx, timeout)
    except (OSError, http.client.HTTPException) as err:
        return ProbeResult(url, error=_explain(err, timeout))


def _get(url: str, host: str, port: int, ctx: ssl.SSLContext, timeout: float) -> ProbeResult:
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
    try:
        conn.connect()
        assert isinstance(conn.sock, ssl.SSLSocket)
        leaf = conn.sock.getpeercert(binary_form=True)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        body = response.read(512).decode("utf-8", "replace").strip()
        return ProbeResult(url, status=response.status, body=body, presented=Presented(leaf))
    finally:
        conn.close()


def _verifying_context(ca_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem.decode("ascii", "replace"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.hostname_checks_common_name = False
    return ctx


def _trusting_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _explain(err: BaseException, timeout: float) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g}s"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve host: {err.strerror}"
    if isinstance(err, ssl.SSLError):
        return f"TLS handshake failed: {err.reason or err}"
    return f"{type(err).__name__}: {err}"
