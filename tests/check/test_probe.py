"""The TLS ``/healthz`` probe against a real HTTPS server on 127.0.0.1 (no cluster)."""

from __future__ import annotations

import pytest

from shardmesh.check_probe import healthz_url, probe
from tests.check.tls import DAY, Issued, closed_port, healthz_server, make_ca, make_leaf, now


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


def test_trusted_server_answers_and_verifies(ca: Issued) -> None:
    with healthz_server(make_leaf(ca)) as url:
        result = probe(url, ca.pem, 5)
    assert (result.error, result.status, result.body) == ("", 200, "ok")
    assert result.presented is not None and result.presented.verify_error == ""
    assert result.url.endswith("/healthz") and "/mutate" not in result.url


@pytest.mark.parametrize(("serving", "needle"), [
    pytest.param(lambda ca: make_leaf(make_ca("other-ca")), "unable to get local issuer",
                 id="signed-by-another-ca"),
    pytest.param(lambda ca: make_leaf(ca, not_after=now() - DAY), "expired", id="expired-leaf"),
    pytest.param(lambda ca: make_leaf(ca, ip="127.0.0.2"), "mismatch", id="wrong-ip-san"),
])
def test_untrusted_server_is_still_reached(ca: Issued, serving, needle: str) -> None:  # type: ignore[no-untyped-def]
    with healthz_server(serving(ca)) as url:
        result = probe(url, ca.pem, 5)
    assert result.status == 200, "the unverified second attempt still reaches /healthz"
    assert result.presented is not None and result.presented.leaf_der
    assert needle in result.presented.verify_error.lower()


def test_unhealthy_server_reports_its_status(ca: Issued) -> None:
    with healthz_server(make_leaf(ca), status=503) as url:
        result = probe(url, ca.pem, 5)
    assert result.status == 503 and result.error == ""


def test_closed_port_is_connection_refused(ca: Issued) -> None:
    result = probe(f"https://127.0.0.1:{closed_port()}/mutate", ca.pem, 5)
    assert result.error == "connection refused" and result.status is None


def test_without_a_bundle_it_probes_without_verifying(ca: Issued) -> None:
    with healthz_server(make_leaf(ca)) as url:
        result = probe(url, None, 5)
    assert result.status == 200 and result.presented is not None


@pytest.mark.parametrize(("url", "expected"), [
    pytest.param("https://127.0.0.1:8443/mutate", "https://127.0.0.1:8443/healthz", id="ip-port"),
    pytest.param("https://hook.example/mutate?x", "https://hook.example:443/healthz",
                 id="default-port"),
    pytest.param("https://[::1]:9443/m", "https://[::1]:9443/healthz", id="ipv6"),
])
def test_healthz_url(url: str, expected: str) -> None:
    assert healthz_url(url)[2] == expected


@pytest.mark.parametrize(("url", "needle"), [
    pytest.param("http://127.0.0.1:80/mutate", "is not https", id="plain-http"),
    pytest.param("https://127.0.0.1:99999/mutate", "bad port", id="port-out-of-range"),
    pytest.param("https:///mutate", "no host", id="no-host"),
])
def test_unusable_url_is_an_error_not_a_crash(url: str, needle: str) -> None:
    result = probe(url, None, 1)
    assert needle in result.error and url in result.error
