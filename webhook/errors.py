"""Two error families, mapped to HTTP in one place (``webhook.server``), as kopf does.

- ``WebhookError``: the review itself is broken (not JSON, wrong kind, no uid).
  There is nobody to answer ``allowed: false`` to, so the answer is an HTTP
  error with ``status`` and a message naming what was wrong.
- ``AdmissionError``: the review is fine but the pod is denied. The answer is
  HTTP 200 with ``allowed: false`` and the message, which ``kubectl`` shows.
"""

from __future__ import annotations


class WebhookError(Exception):
    """A review that cannot be answered; ``status`` is the HTTP status to send."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class BodyTooLarge(WebhookError):
    status = 413


class LookupFailed(WebhookError):
    """The namespace could not be read, so no decision can be made (fails per failurePolicy)."""

    status = 503


class AdmissionError(Exception):
    """The pod is denied: ``reason`` is a ``webhook.reasons`` constant."""

    #: The HTTP-like code put in the response's status (403 as the API server uses).
    code: int = 403

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
