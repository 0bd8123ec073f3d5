"""Every error the sidecar answers with: its code, its HTTP status, and its JSON body.

Design rules:
- The status of a code is defined here once (``CODES``); nothing else picks a
  status for an error.
- Bodies are ``{"error": code, "message": ..., **details}``; the message names
  the offending thing and its value.
- ``render`` returns complete response bytes so the hot path writes one buffer.
"""

from __future__ import annotations

import json
from typing import Any, Final

#: code -> (status, reason phrase)
CODES: Final[dict[str, tuple[int, str]]] = {
    "bad_request": (400, "Bad Request"),
    "missing_shard_key": (400, "Bad Request"),
    "invalid_shard_key": (400, "Bad Request"),
    "ambiguous_shard_key": (400, "Bad Request"),
    "unknown_route": (404, "Not Found"),
    "not_found": (404, "Not Found"),
    "method_not_allowed": (405, "Method Not Allowed"),
    "body_too_large": (413, "Payload Too Large"),
    "client_timeout": (408, "Request Timeout"),
    "request_timeout": (408, "Request Timeout"),
    "expectation_failed": (417, "Expectation Failed"),
    "uri_too_long": (414, "URI Too Long"),
    "headers_too_large": (431, "Request Header Fields Too Large"),
    "unsupported_transfer_encoding": (501, "Not Implemented"),
    "http_version_not_supported": (505, "HTTP Version Not Supported"),
    "upstream_error": (502, "Bad Gateway"),
    "shard_unavailable": (503, "Service Unavailable"),
    "shard_map_not_ready": (503, "Service Unavailable"),
    "shutting_down": (503, "Service Unavailable"),
    "too_many_connections": (503, "Service Unavailable"),
    "upstream_timeout": (504, "Gateway Timeout"),
}

#: Seconds a client should wait before retrying a 503.
RETRY_AFTER_SECONDS: Final = 1


#: Longest piece of a client's value quoted in an error message.
_QUOTE_LIMIT: Final = 64


def quote(value: bytes | str) -> str:
    """A client-sent value for an error message: decoded, cut short when long."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text if len(text) <= _QUOTE_LIMIT else text[:_QUOTE_LIMIT] + "..."


class ProxyError(Exception):
    """A request the sidecar answers itself, with ``code``'s status."""

    code: str
    message: str
    details: dict[str, Any]

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        if code not in CODES:
            raise ValueError(f"unknown error code '{code}'")
        self.code = code
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        return CODES[self.code][0]

    def body(self) -> bytes:
        return json.dumps({"error": self.code, "message": self.message, **self.details}).encode()


def render(error: ProxyError, *, close: bool = False, ordinal: int | None = None) -> bytes:
    """The full HTTP/1.1 response for ``error``. 503s carry ``Retry-After``."""
    status, reason = CODES[error.code]
    body = error.body()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
            f"Content-Length: {len(body)}"]
    if status == 503:
        head.append(f"Retry-After: {RETRY_AFTER_SECONDS}")
    if ordinal is not None:
        head.append(f"X-Shard-Ordinal: {ordinal}")
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def json_response(payload: Any, *, close: bool = False) -> bytes:
    """A 200 JSON response (the introspection endpoints)."""
    body = json.dumps(payload, indent=1).encode() + b"\n"
    connection = "Connection: close\r\n" if close else ""
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{connection}\r\n")
    return head.encode() + body
