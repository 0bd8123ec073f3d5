"""The real server: gunicorn with two workers over TLS, on 127.0.0.1, offline, file mode,
once with each worker class (gevent, the default, and gthread).

The golden cases that need no namespace object go through it too, so the
bytes on the wire match what the Flask test client saw.
"""

from __future__ import annotations

import base64
import json
import ssl
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.webhook import serving
from tests.webhook.golden import TESTDATA, load_input, pod_of, review
from tests.webhook.test_golden import EXPLICIT
from webhook import patch


@pytest.fixture(scope="module")
def certdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    serving.write_pair(directory)
    return directory


@pytest.fixture(scope="module", params=["gevent", "gthread"])
def server(certdir: Path, request: pytest.FixtureRequest) -> Iterator[serving.Webhook]:
    hook = serving.start(
        ["--offline", "--cert-mode", "file", "--cert-file", str(certdir / "tls.crt"),
         "--key-file", str(certdir / "tls.key"), "--workers", "2", "--threads", "4",
         "--worker-class", request.param, "--max-body-bytes", "262144"],
        certdir / f"webhook-{request.param}.log")
    yield hook
    hook.stop()


def post(server: serving.Webhook, cadata: bytes, body: bytes) -> tuple[int, Any]:
    conn = server.connection(cadata)
    conn.request("POST", "/mutate", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data)


def simple_cases() -> list[Any]:
    """Cases that need neither a namespace object nor a setting (offline has neither)."""
    out = []
    for path in sorted(TESTDATA.glob("*.yaml")):
        _, namespace_obj, _ = load_input(path)
        if not namespace_obj and path.stem not in EXPLICIT:
            out.append(pytest.param(path, id=path.stem))
    return out


@pytest.mark.parametrize("path", simple_cases())
def test_golden_over_tls(server: serving.Webhook, certdir: Path, path: Path) -> None:
    pod, _, namespace = load_input(path)
    status, answer = post(server, (certdir / "ca.crt").read_bytes(),
                          json.dumps(review(pod, namespace, False)).encode())
    assert status == 200
    response = answer["response"]
    golden = path.with_name(path.name + ".injected").read_text()
    header, _, body = golden.partition("\n")
    assert header == f"# decision: {response['auditAnnotations']['decision']}"
    if response["allowed"]:
        ops = json.loads(base64.b64decode(response["patch"])) if "patch" in response else []
        assert patch.apply(pod, ops) == pod_of(body)
    else:
        assert response["status"]["message"] + "\n" == body


def test_every_form_of_one_review_gets_the_same_answer(server: serving.Webhook,
                                                       certdir: Path) -> None:
    """The API server's form (with ``?timeout=``) takes the WSGI lane; a chunked body
    or a media type parameter goes through Flask. The answers are the same bytes."""
    pod, _, namespace = load_input(TESTDATA / "pod-annotation-true.yaml")
    body = json.dumps(review(pod, namespace, False)).encode()
    forms: list[tuple[str, dict[str, str], Any]] = [
        ("/mutate?timeout=10s", {"Content-Type": "application/json"}, body),
        ("/mutate", {"Content-Type": "application/json; charset=utf-8"}, body),
        ("/mutate", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
         iter([body[:100], body[100:]])),
    ]
    conn = server.connection((certdir / "ca.crt").read_bytes())
    answers = []
    for path, headers, payload in forms:  # one keep-alive connection, like the API server
        conn.request("POST", path, body=payload, headers=headers,
                     encode_chunked="Transfer-Encoding" in headers)
        resp = conn.getresponse()
        answers.append((resp.status, resp.getheader("Content-Type"), resp.read()))
    conn.close()
    assert answers[0][0] == 200 and b'"patch"' in answers[0][2]
    assert answers[1] == answers[0] and answers[2] == answers[0]


def test_malformed_and_oversized_reviews(server: serving.Webhook, certdir: Path) -> None:
    ca = (certdir / "ca.crt").read_bytes()
    assert post(server, ca, b"{")[0] == 400
    status, answer = post(server, ca, b" " * 300_000)
    assert status == 413 and "larger than 262144 bytes" in answer["message"]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
@pytest.mark.parametrize(
    ("version", "accepted"),
    [
        pytest.param(ssl.TLSVersion.TLSv1_1, False, id="tls1.1-refused"),
        pytest.param(ssl.TLSVersion.TLSv1_2, True, id="tls1.2"),
        pytest.param(ssl.TLSVersion.TLSv1_3, True, id="tls1.3"),
    ],
)
def test_tls_versions(server: serving.Webhook, version: ssl.TLSVersion, accepted: bool) -> None:
    import socket

    ctx = serving.client_context(None)
    ctx.minimum_version = ctx.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        with socket.create_connection((serving.HOST, server.port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as tls:
            negotiated = tls.version()
    except ssl.SSLError as err:
        # The server's alert, not the client refusing to offer the version.
        assert err.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
        negotiated = None
    assert (negotiated is not None) is accepted


def test_plain_http_is_refused(server: serving.Webhook) -> None:
    import http.client

    conn = http.client.HTTPConnection(serving.HOST, server.port, timeout=5)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.request("GET", "/healthz")
        conn.getresponse()


def test_metrics_add_up_across_workers(server: serving.Webhook, certdir: Path) -> None:
    ca = (certdir / "ca.crt").read_bytes()
    pod, _, namespace = load_input(TESTDATA / "not-enabled.yaml")

    def skipped_count() -> float:
        return sum(value for labels, value in
                   server.samples(ca, "shardmesh_webhook_decisions_total")
                   if labels.get("reason") == "injection_not_enabled")

    before = skipped_count()
    for _ in range(12):  # fresh connections, spread over both workers
        assert post(server, ca, json.dumps(review(pod, namespace, False)).encode())[0] == 200
    assert skipped_count() == before + 12


def test_certificate_files_are_reloaded_without_restart(server: serving.Webhook,
                                                        certdir: Path) -> None:
    old = serving.peer_serial(server.port)
    pid = server.proc.pid
    bundle = serving.write_pair(certdir)  # a new CA and a new serving certificate
    from cryptography import x509

    new = x509.load_pem_x509_certificate(bundle.cert).serial_number
    assert new != old
    deadline = time.monotonic() + 10
    seen: list[int] = []
    while time.monotonic() < deadline:
        seen = [serving.peer_serial(server.port) for _ in range(8)]  # both workers
        if set(seen) == {new}:
            break
        time.sleep(0.2)
    assert set(seen) == {new}
    assert server.proc.poll() is None and server.proc.pid == pid
    # And the new chain is what clients verify against now.
    assert post(server, bundle.ca_bundle, b"{")[0] == 400


def test_request_heads_are_parsed_in_c(server: serving.Webhook) -> None:
    # gunicorn_h1c is a declared dependency; gunicorn would quietly fall back
    # to its Python parser (6-7% more CPU per review) if it went missing.
    assert '"http_parser":"gunicorn_h1c"' in server.logs()


def test_gunicorn_log_lines_format(server: serving.Webhook) -> None:
    # gunicorn's own lines ("Booting worker ...") print %(process)d: the
    # logging switches that speed up the decision lines must leave it on.
    logs = server.logs()
    assert "Booting worker with pid" in logs
    assert "Logging error" not in logs, logs


@pytest.mark.parametrize("h1c", ["missing", "too-old", "current"])
def test_logged_parser_is_the_one_gunicorn_picks(h1c: str, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    """The start-up log's ``http_parser`` follows gunicorn's own rule for "auto"."""
    from gunicorn.config import Config
    from gunicorn.http import message

    from webhook import cli

    fake = types.ModuleType("gunicorn_h1c")
    if h1c == "current":
        fake.LimitRequestLine = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gunicorn_h1c", None if h1c == "missing" else fake)
    # gunicorn caches its finding in two globals: start afresh, and restore both after.
    monkeypatch.setattr(message, "_fast_parser_available", None)
    monkeypatch.setattr(message, "_fast_parser_module", message._fast_parser_module)
    config = Config()
    config.set("http_parser", "auto")
    picks_c = message._check_fast_parser(config)
    assert cli.http_parser() == ("gunicorn_h1c" if picks_c else "python")
    assert picks_c == (h1c == "current")
