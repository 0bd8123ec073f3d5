"""The Flask app: HTTP in, ``webhook.admission`` in the middle, HTTP out.

This is the only place that maps errors to HTTP statuses: ``WebhookError``
(a broken review) becomes its ``status`` with a JSON ``{"error", "message"}``
body; a denial is already an ``allowed: false`` review from the admission
layer. Logging and metrics also happen here, once per review.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from webhook import admission, metrics
from webhook.admission import Handled, NamespaceLookup
from webhook.errors import BodyTooLarge, WebhookError
from webhook.logs import event
from webhook.podview import display_name
from webhook.policy import Decision
from webhook.review import AdmissionRequest
from webhook.settings import Settings

ReadyCheck = Callable[[], bool]
#: Told about every decision (non-dry-run filtering is its business): posts Events.
Recorder = Callable[[AdmissionRequest, Decision], None]


def create_app(settings: Settings, namespaces: NamespaceLookup,
               ready: ReadyCheck = lambda: True, recorder: Recorder | None = None) -> Flask:
    """The webhook app. ``namespaces`` returns a namespace's object (the I/O edge);
    ``ready`` says whether a serving certificate is loaded; ``recorder`` posts Events."""
    app = Flask("shardmesh-webhook")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes

    @app.post("/mutate")
    def mutate() -> tuple[Response, int]:
        started = time.perf_counter()
        try:
            body = _read_body(settings.max_body_bytes)
            handled = admission.review(body, settings, namespaces)
        except WebhookError as err:
            return _bad_review(err)
        metrics.LATENCY.observe(time.perf_counter() - started)
        _record(handled, time.perf_counter() - started)
        if recorder is not None:
            recorder(handled.request, handled.decision)
        return _json(handled.response), 200

    @app.get("/healthz")
    def healthz() -> tuple[str, int]:
        return "ok\n", 200

    @app.get("/readyz")
    def readyz() -> tuple[str, int]:
        return ("ok\n", 200) if ready() else ("not ready\n", 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

    return app


def _read_body(limit: int) -> bytes:
    if request.mimetype != "application/json":
        raise WebhookError(f"invalid Content-Type '{request.content_type}': "
                           "expected application/json", status=415)
    try:
        return request.get_data(cache=False)
    except RequestEntityTooLarge:
        _drain(limit)
        raise BodyTooLarge(f"the AdmissionReview is larger than {limit} bytes") from None


def _drain(limit: int) -> None:
    """Read (and drop) an oversized body, up to twice the limit, so that the 413
    reaches the client instead of being lost to a TCP reset when the server
    closes a socket with unread data. Bigger bodies are cut off (reset)."""
    stream = request.environ.get("wsgi.input")
    left = min(request.content_length or limit, 2 * limit)
    while stream is not None and left > 0:
        chunk = stream.read(min(left, 65536))
        if not chunk:
            break
        left -= len(chunk)


def _bad_review(err: WebhookError) -> tuple[Response, int]:
    metrics.BAD_REVIEWS.labels(status=str(err.status)).inc()
    event("bad review", logging.WARNING, status=err.status, error=str(err))
    return _json({"error": type(err).__name__, "message": str(err)}), err.status


def _json(value: object) -> Response:
    # orjson rather than Flask's jsonify: a fifth of the cost, same JSON.
    return Response(orjson.dumps(value), mimetype="application/json")


def _record(handled: Handled, seconds: float) -> None:
    decision, req = handled.decision, handled.request
    dry_run = bool(req.get("dryRun"))
    metrics.DECISIONS.labels(decision.result, decision.reason, str(dry_run).lower()).inc()
    fields: dict[str, object] = {
        "uid": req.get("uid"),
        "namespace": req.get("namespace"),
        "pod": display_name(req.get("object") or {}),
        "result": decision.result,
        "reason": decision.reason,
        "dryRun": dry_run,
        "ms": round(seconds * 1000, 3),
    }
    if decision.result == "rejected":
        fields["message"] = decision.message
    event("decision", **fields)
