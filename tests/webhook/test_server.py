"""The web layer with Flask's test client: HTTP statuses, denials, metrics and logs.

Every test that posts a review runs twice: through the WSGI lane that takes
plain reviews (``webhook.mutate_lane``, the default) and through Flask alone.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from tests.webhook.golden import review
from webhook.errors import LookupFailed
from webhook.server import create_app
from webhook.settings import Settings

POD: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"generateName": "client-", "namespace": "shop",
                 "annotations": {"shard.io/inject": "true", "shard.io/backend": "svc:8080"}},
    "spec": {"containers": [{"name": "app", "image": "app:1"}]},
}


@pytest.fixture(params=[True, False], ids=["lane", "flask"])
def lane(request: pytest.FixtureRequest) -> bool:
    on: bool = request.param
    return on


@pytest.fixture
def client(lane: bool) -> FlaskClient:
    return create_app(Settings(max_body_bytes=64 * 1024), lambda _ns: {},
                      lane=lane).test_client()


def counted(result: str, reason: str, dry_run: str = "false") -> float:
    value = REGISTRY.get_sample_value("shardmesh_webhook_decisions_total",
                                      {"result": result, "reason": reason, "dry_run": dry_run})
    return value or 0.0


def with_review(**changes: Any) -> bytes:
    return json.dumps({**review(POD, "shop", False), **changes}).encode()


def with_request(**changes: Any) -> bytes:
    body = review(POD, "shop", False)
    body["request"].update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        pytest.param(b"{not json", 400, "the body is not JSON", id="not-json"),
        pytest.param(b"\xff\xfe", 400, "the body is not JSON", id="not-utf8"),
        pytest.param(b"[]", 400, "got JSON list", id="array"),
        pytest.param(with_review(apiVersion="admission.k8s.io/v1beta1"),
                     400, "invalid apiVersion 'admission.k8s.io/v1beta1'", id="v1beta1"),
        pytest.param(with_review(kind="Pod"),
                     400, "invalid kind 'Pod'", id="wrong-kind"),
        pytest.param(with_review(request=None),
                     400, "has no request", id="no-request"),
        pytest.param(with_request(uid=""), 400, "has no uid", id="empty-uid"),
        pytest.param(with_request(uid=None), 400, "has no uid", id="null-uid"),
        pytest.param(with_request(object="pod"), 400, "'object' is not a JSON object",
                     id="object-not-an-object"),
        pytest.param(with_request(kind="Pod"), 400, "'kind' is not a JSON object",
                     id="kind-not-an-object"),
        pytest.param(with_request(operation=5), 400, "'operation' is not a string",
                     id="operation-not-a-string"),
        pytest.param(with_request(namespace=["shop"]), 400, "'namespace' is not a string",
                     id="namespace-not-a-string"),
        pytest.param(with_review(kind="x" * 50_000), 400, "...[49802 more bytes]",
                     id="echo-clipped"),
        pytest.param(b"x" * (65 * 1024), 413, "larger than 65536 bytes", id="too-large"),
    ],
)
def test_broken_reviews_get_http_errors(client: FlaskClient, body: bytes, status: int,
                                        message: str) -> None:
    resp = client.post("/mutate", data=body, content_type="application/json")
    assert resp.status_code == status
    assert message in resp.get_json()["message"]


def test_wrong_content_type_is_415(client: FlaskClient) -> None:
    resp = client.post("/mutate", data=with_request(), content_type="text/plain")
    assert resp.status_code == 415
    assert "application/json" in resp.get_json()["message"]


def test_denial_is_allowed_false_with_the_message(client: FlaskClient) -> None:
    pod = {**POD, "metadata": {**POD["metadata"], "annotations": {
        "shard.io/inject": "true", "shard.io/backend": "svc:8080", "shard.io/timeout": "soon"}}}
    before = counted("rejected", "invalid_annotation")
    resp = client.post("/mutate", json=review(pod, "shop", False))
    answer = resp.get_json()["response"]
    assert resp.status_code == 200 and answer["allowed"] is False
    assert "invalid value 'soon' for annotation 'shard.io/timeout'" in answer["status"]["message"]
    assert answer["status"]["code"] == 403
    assert "patch" not in answer
    assert counted("rejected", "invalid_annotation") == before + 1


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"operation": "UPDATE"}, id="update"),
        pytest.param({"kind": {"group": "apps", "version": "v1", "kind": "Deployment"}},
                     id="not-a-pod"),
        pytest.param({"subResource": "ephemeralcontainers"}, id="subresource"),
    ],
)
def test_anything_but_pod_create_passes_untouched(client: FlaskClient,
                                                  changes: dict[str, Any]) -> None:
    answer = client.post("/mutate", data=with_request(**changes),
                         content_type="application/json").get_json()["response"]
    assert answer["allowed"] is True and "patch" not in answer
    assert answer["auditAnnotations"]["decision"] == "skipped: not_pod_create"


def api_server_review(operation: str, obj: Any, old: Any, sub: str = "") -> bytes:
    """A review as the API server sends it for ``operation`` (it sends ``object``
    and ``oldObject`` as null where there is none, and no ``subResource`` key
    unless there is one)."""
    body = review(POD, "shop", False)
    body["request"].update(operation=operation, object=obj, oldObject=old, options=None)
    if sub:
        body["request"]["subResource"] = sub
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(api_server_review("DELETE", None, POD), id="delete"),
        pytest.param(api_server_review("UPDATE", POD, POD), id="update"),
        pytest.param(api_server_review("CONNECT", {"kind": "PodExecOptions",
                                                   "command": ["sh"]}, None, "exec"),
                     id="connect-exec"),
        pytest.param(api_server_review("CREATE", None, None), id="create-without-object"),
    ],
)
def test_other_operations_as_the_api_server_sends_them_are_allowed(
        client: FlaskClient, body: bytes) -> None:
    """A user may widen the webhook's operations; none of them is a broken review."""
    resp = client.post("/mutate", data=body, content_type="application/json")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    answer = resp.get_json()["response"]
    assert answer["allowed"] is True and "patch" not in answer
    assert answer["auditAnnotations"]["decision"] == "skipped: not_pod_create"


def test_a_huge_annotation_value_is_not_echoed_in_full(
        lane: bool, caplog: pytest.LogCaptureFixture) -> None:
    value = "x" * (1024 * 1024)
    pod = {**POD, "metadata": {**POD["metadata"], "annotations": {
        "shard.io/inject": "true", "shard.io/backend": "svc:8080", "shard.io/timeout": value}}}
    app = create_app(Settings(), lambda _ns: {}, lane=lane).test_client()
    with caplog.at_level(logging.INFO, logger="shardmesh.webhook"):
        resp = app.post("/mutate", json=review(pod, "shop", False))
    answer = resp.get_json()["response"]
    message = answer["status"]["message"]
    assert answer["allowed"] is False and len(message) < 1000
    assert message.startswith("invalid value 'xxxxx")
    assert f"...[{len(value) - 200} more bytes]' for annotation 'shard.io/timeout'" in message
    logged = [r for r in caplog.records if r.getMessage() == "decision"]
    assert logged and len(str(logged[-1].fields)) < 2000  # type: ignore[attr-defined]


def test_decisions_are_counted_logged_and_dry_run_labelled(
        client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    before = counted("injected", "injected", "true")
    with caplog.at_level(logging.INFO, logger="shardmesh.webhook"):
        resp = client.post("/mutate", json=review(POD, "shop", True))
    assert resp.get_json()["response"]["allowed"] is True
    assert counted("injected", "injected", "true") == before + 1
    [record] = [r for r in caplog.records if r.getMessage() == "decision"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["pod"] == "client-*" and fields["namespace"] == "shop"
    assert fields["result"] == "injected" and fields["dryRun"] is True
    assert fields["uid"]


def test_namespace_lookup_failure_is_503(lane: bool) -> None:
    def broken(name: str) -> dict[str, Any]:
        raise LookupFailed(f"cannot read namespace '{name}': 500 boom")

    app = create_app(Settings(), broken, lane=lane).test_client()
    resp = app.post("/mutate", json=review(POD, "shop", False))
    assert resp.status_code == 503
    assert "cannot read namespace 'shop'" in resp.get_json()["message"]


def test_health_readiness_and_metrics() -> None:
    ready = {"value": False}
    app = create_app(Settings(), lambda _ns: {}, ready=lambda: ready["value"]).test_client()
    assert app.get("/healthz").status_code == 200
    assert app.get("/readyz").status_code == 503
    ready["value"] = True
    assert app.get("/readyz").status_code == 200
    metrics = app.get("/metrics").get_data(as_text=True)
    assert "shardmesh_webhook_review_duration_seconds_bucket" in metrics
    assert app.get("/mutate").status_code == 405
