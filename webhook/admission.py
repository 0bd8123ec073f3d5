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

from sidecar.annotations import clip
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


#: Request fields this webhook reads, with the JSON type each must have if present.
_FIELD_TYPES: tuple[tuple[str, type, str], ...] = (
    ("kind", dict, "a JSON object"), ("object", dict, "a JSON object"),
    ("operation", str, "a string"), ("namespace", str, "a string"),
    ("subResource", str, "a string"), ("dryRun", bool, "a boolean"),
)


def decode(body: bytes) -> AdmissionRequest:
    """The request of an AdmissionReview v1, or ``WebhookError`` naming what is wrong.

    ``object`` may be null or absent: the API server sends it so for DELETE (and
    ``oldObject`` for CREATE and CONNECT)."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError as err:  # also invalid UTF-8
        raise WebhookError(f"the body is not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise WebhookError(f"expected an AdmissionReview object, got JSON {type(doc).__name__}")
    for field, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
        if doc.get(field) != expected:
            raise WebhookError(f"invalid {field} {clip(repr(doc.get(field)))}: "
                               f"expected '{expected}'")
    request = doc.get("request")
    if not isinstance(request, dict):
        raise WebhookError("the AdmissionReview has no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise WebhookError("the AdmissionReview request has no uid")
    for field, type_, what in _FIELD_TYPES:
        if request.get(field) is not None and not isinstance(request[field], type_):
            raise WebhookError(f"the AdmissionReview request {clip(uid)}: '{field}' is not "
                               f"{what}")
    return cast(AdmissionRequest, request)


def is_pod_create(request: AdmissionRequest) -> bool:
    """A pod's creation, with the pod: the only review that can be injected."""
    kind = request.get("kind") or {"group": "", "version": "", "kind": ""}
    return (request.get("operation") == "CREATE" and kind.get("kind") == "Pod"
            and kind.get("group", "") == "" and not request.get("subResource")
            and request.get("object") is not None)


def review(body: bytes, settings: Settings, namespaces: NamespaceLookup) -> Handled:
    """Answer one review. Raises ``WebhookError`` for a broken one (HTTP 4xx/5xx)."""
    request = decode(body)
    if not is_pod_create(request):
        # Only pod CREATE is registered, but a user may widen the operations:
        # anything else is let through untouched.
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
