"""The sidecar's own answers on HTTP/2: gRPC statuses for gRPC, JSON errors for the rest.

Design rules:
- A gRPC request (``content-type: application/grpc*``) is answered as gRPC does:
  HTTP 200 and a trailers-only response with ``grpc-status`` and ``grpc-message``
  (SPEC §8). Anything else gets the JSON body and HTTP status of ``errors.CODES``,
  exactly as on HTTP/1.1.
- The gRPC status of an error code is defined here once (``GRPC_STATUS``).
"""

from __future__ import annotations

from typing import Final

from sidecar.errors import CODES, RETRY_AFTER_SECONDS, ProxyError

OK: Final = 0
CANCELLED: Final = 1
INVALID_ARGUMENT: Final = 3
DEADLINE_EXCEEDED: Final = 4
NOT_FOUND: Final = 5
RESOURCE_EXHAUSTED: Final = 8
FAILED_PRECONDITION: Final = 9
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14

#: error code -> gRPC status (gRPC's "HTTP to gRPC status" mapping, made specific).
GRPC_STATUS: Final[dict[str, int]] = {
    "bad_request": INVALID_ARGUMENT,
    "missing_shard_key": INVALID_ARGUMENT,
    "invalid_shard_key": INVALID_ARGUMENT,
    "ambiguous_shard_key": INVALID_ARGUMENT,
    "unknown_route": NOT_FOUND,
    "not_found": NOT_FOUND,
    "method_not_allowed": UNIMPLEMENTED,
    "body_too_large": RESOURCE_EXHAUSTED,
    "headers_too_large": RESOURCE_EXHAUSTED,
    "client_timeout": DEADLINE_EXCEEDED,
    "request_timeout": DEADLINE_EXCEEDED,
    "upstream_timeout": DEADLINE_EXCEEDED,
    "upstream_error": UNAVAILABLE,
    "shard_unavailable": UNAVAILABLE,
    "shard_map_not_ready": UNAVAILABLE,
    "shutting_down": UNAVAILABLE,
    "too_many_connections": UNAVAILABLE,
}

Headers = list[tuple[bytes, bytes]]


def is_grpc(content_type: bytes | None) -> bool:
    """``application/grpc``, ``application/grpc+proto``, ``application/grpc-web``..."""
    return content_type is not None and content_type[:16].lower() == b"application/grpc"


def grpc_message(text: str) -> bytes:
    """Percent-encode as the gRPC wire spec asks: bytes outside 0x20..0x7E, and '%'."""
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
                    for b in text.encode("utf-8"))


def grpc_status_of(error: ProxyError) -> int:
    return GRPC_STATUS.get(error.code, INTERNAL)


def grpc_trailers(status: int, message: str) -> Headers:
    return [(b"grpc-status", b"%d" % status), (b"grpc-message", grpc_message(message))]


def error_response(error: ProxyError, grpc: bool, ordinal: int | None = None
                   ) -> tuple[Headers, bytes]:
    """(headers, body) answering ``error``: with no body, the headers end the stream
    (gRPC trailers-only); 503s and UNAVAILABLE carry ``retry-after``."""
    status = CODES[error.code][0]
    extra: Headers = []
    if status == 503:
        extra.append((b"retry-after", b"%d" % RETRY_AFTER_SECONDS))
    if ordinal is not None:
        extra.append((b"x-shard-ordinal", b"%d" % ordinal))
    if grpc:
        head = [(b":status", b"200"), (b"content-type", b"application/grpc")]
        return head + grpc_trailers(grpc_status_of(error), error.message) + extra, b""
    body = error.body()
    head = [(b":status", b"%d" % status), (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body))]
    return head + extra, body
