"""AdmissionReview in, AdmissionReview out: decoding, the decision, the response.

No Flask, no sockets: ``review`` takes the decoded JSON body and a function
that returns a namespace's object, and returns the response review together
with what was decided (for the web layer to log and count). Broken reviews
raise ``WebhookError``; denials are ``AdmissionError`` turned into
``allowed: false`` here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson

from webhook import patch, reasons
from webhook.errors import AdmissionError, WebhookError
from webhook.inject import Outcome, inject
from webhook.podview import Obj
from webhook.policy import Decision
from webhook.review import API_VERSION, KIND, AdmissionRequest, AdmissionResponse, AdmissionReview
from webhook.settings import Settings

NamespaceLookup = Callable[[str], Obj]

#: The key under which the API server records the decision in the audit log
#: (it prefixes it with the webhook's name).
AUDIT_KEY = "decision"


@dataclass(frozen=True)
class Handled:
    """A review and its answer, plus the decision for logs and metrics."""

    request: AdmissionRequest
    response: AdmissionReview
    decision: Decision


def decode(body: bytes) -> AdmissionRequest:
    """The request of an AdmissionReview v1, or ``WebhookError`` naming what is wrong."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError as err:  # also invalid UTF-8
        raise WebhookError(f"the body is not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise WebhookError(f"expected an AdmissionReview object, got JSON {type(doc).__name__}")
    for field, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
        if doc.get(field) != expected:
            raise WebhookError(f"invalid {field} {doc.get(field)!r}: expected '{expected}'")
    request = doc.get("request")
    if not isinstance(request, dict):
        raise WebhookError("the AdmissionReview has no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise WebhookError("the AdmissionReview request has no uid")
    if not isinstance(request.get("object"), dict):
        raise WebhookError(f"the AdmissionReview request {uid} has no object")
    return cast(AdmissionRequest, request)


def is_pod_create(request: AdmissionRequest) -> bool:
    kind = request.get("kind") or {"group": "", "version": "", "kind": ""}
    return (request.get("operation") == "CREATE" and kind.get("kind") == "Pod"
            and kind.get("group", "") == "" and not request.get("subResource"))


def review(body: bytes, settings: Settings, namespaces: NamespaceLookup) -> Handled:
    """Answer one review. Raises ``WebhookError`` for a broken one (HTTP 4xx/5xx)."""
    request = decode(body)
    if not is_pod_create(request):
        # Only pod CREATE is registered; anything else is let through untouched.
        decision = Decision("skipped", reasons.NOT_POD_CREATE,
                            reasons.SENTENCES[reasons.NOT_POD_CREATE])
        return Handled(request, respond(request["uid"], decision, []), decision)
    namespace = request.get("namespace") or _object_namespace(request)
    outcome = inject(request["object"], namespace, namespaces(namespace), settings)
    try:
        _raise_if_rejected(outcome)
    except AdmissionError as err:
        return Handled(request, deny(request["uid"], err), outcome.decision)
    return Handled(request, respond(request["uid"], outcome.decision, outcome.patch),
                   outcome.decision)


def _object_namespace(request: AdmissionRequest) -> str:
    meta = request["object"].get("metadata") or {}
    return str(meta.get("namespace") or "default")


def _raise_if_rejected(outcome: Outcome) -> None:
    if outcome.decision.result == "rejected":
        raise AdmissionError(outcome.decision.reason, outcome.decision.message)


def _envelope(response: AdmissionResponse) -> AdmissionReview:
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def respond(uid: str, decision: Decision, ops: patch.Patch) -> AdmissionReview:
    response: AdmissionResponse = {
        "uid": uid,
        "allowed": True,
        "auditAnnotations": {AUDIT_KEY: str(decision)},
    }
    if ops:
        response["patchType"] = "JSONPatch"
        response["patch"] = patch.encode(ops)
    return _envelope(response)


def deny(uid: str, err: AdmissionError) -> AdmissionReview:
    return _envelope({
        "uid": uid,
        "allowed": False,
        "status": {"code": err.code, "reason": "Forbidden",
                   "message": str(err)},
        "auditAnnotations": {AUDIT_KEY: f"rejected: {err.reason}"},
    })
