"""The Flask app: HTTP in, ``webhook.admission`` in the middle, HTTP out.

This is the only place that maps errors to HTTP statuses: ``WebhookError``
(a broken review) becomes its ``status`` with a JSON ``{"error", "message"}``
body; a denial is already an ``allowed: false`` review from the admission
layer. Logging and metrics also happen here, once per review, in
``Reviewer.answer``: the Flask view calls it, and so does the WSGI lane in
front of Flask (``webhook.mutate_lane``) that takes the API server's plain
reviews without Flask's per-request machinery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from sidecar.annotations import clip
from webhook import admission, directory, metrics
from webhook.admission import Handled, NamespaceLookup
from webhook.errors import BodyTooLarge, WebhookError
from webhook.logs import event
from webhook.mutate_lane import MutateLane
from webhook.podview import display_name
from webhook.policy import Decision
from webhook.review import AdmissionRequest
from webhook.settings import Settings

ReadyCheck = Callable[[], bool]
#: Told about every decision (non-dry-run filtering is its business): posts Events.
Recorder = Callable[[AdmissionRequest, Decision], None]


def create_app(settings: Settings, namespaces: NamespaceLookup,
               ready: ReadyCheck = lambda: True, recorder: Recorder | None = None,
               lane: bool = True) -> Flask:
    """The webhook app. ``namespaces`` returns a namespace's object (the I/O edge);
    ``ready`` says whether a serving certificate is loaded; ``recorder`` posts Events.
    ``lane`` puts ``webhook.mutate_lane`` in front of Flask (tests turn it off to
    check that both give the same answers)."""
    app = Flask("shardmesh-webhook")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    reviewer = Reviewer(settings, namespaces, recorder,
                        directory.DirectoryCA(settings.directory_ca_file)
                        if settings.directory_ca_file else None)

    @app.post("/mutate")
    def mutate() -> Response:
        started = time.perf_counter()
        try:
            body = _read_body(settings.max_body_bytes)
        except WebhookError as err:
            status, out = refuse(err)
        else:
            status, out = reviewer.answer(body, started, "flask")
        return Response(out, status=status, mimetype="application/json")

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

    if lane:
        # Flask's documented place for WSGI middleware.
        app.wsgi_app = MutateLane(  # type: ignore[method-assign]
            app.wsgi_app, lambda body, started: reviewer.answer(body, started, "lane"),
            settings.max_body_bytes)
    return app


@dataclass(frozen=True)
class Reviewer:
    """One review, body in, (status, JSON) out, counted and logged: what both the
    Flask view and the WSGI lane call, so that they cannot answer differently."""

    settings: Settings
    namespaces: NamespaceLookup
    recorder: Recorder | None = None
    #: The directory's CA file, when the settings name one.
    directory_ca: directory.DirectoryCA | None = None

    def answer(self, body: bytes, started: float, via: str) -> tuple[int, bytes]:
        metrics.REVIEWS.labels(via).inc()
        try:
            settings = directory.settings_for(self.settings, self.directory_ca)
            handled = admission.review(body, settings, self.namespaces)
        except WebhookError as err:
            return refuse(err)
        except Exception as err:  # a bug: the API server applies failurePolicy to a 500
            return refuse(WebhookError(f"internal error: {type(err).__name__}: {clip(str(err))}",
                                       status=500), bug=True)
        metrics.LATENCY.observe(time.perf_counter() - started)
        _record(handled, time.perf_counter() - started)
        if self.recorder is not None:
            self.recorder(handled.request, handled.decision)
        return 200, orjson.dumps(handled.response)


def refuse(err: WebhookError, bug: bool = False) -> tuple[int, bytes]:
    """A broken review: its HTTP status and a JSON ``{"error", "message"}`` body.

    One log line either way; a ``bug`` (called from its except block) is logged at
    error level with its traceback.
    """
    metrics.BAD_REVIEWS.labels(status=str(err.status)).inc()
    event("bad review", logging.ERROR if bug else logging.WARNING, bug,
          status=err.status, error=str(err))
    return err.status, orjson.dumps({"error": type(err).__name__, "message": str(err)})


def _read_body(limit: int) -> bytes:
    if request.mimetype != "application/json":
        raise WebhookError(f"invalid Content-Type '{clip(str(request.content_type))}': "
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


def _record(handled: Handled, seconds: float) -> None:
    decision, req = handled.decision, handled.request
    dry_run = bool(req.get("dryRun"))
    metrics.DECISIONS.labels(decision.result, decision.reason, str(dry_run).lower()).inc()
    fields: dict[str, object] = {
        # What the request says is echoed clipped (the decision's message already is).
        "uid": clip(str(req.get("uid"))),
        "namespace": clip(str(req.get("namespace"))),
        "pod": clip(display_name(req.get("object") or {})),
        "result": decision.result,
        "reason": decision.reason,
        "dryRun": dry_run,
        "ms": round(seconds * 1000, 3),
    }
    if decision.result == "rejected":
        fields["message"] = decision.message
    event("decision", **fields)
