"""The little HTTP/1.1 the directory speaks: GET requests in, JSON or a chunked stream out.

Pure: bytes in, bytes out. Requests carry no body (anything but GET is 405),
so a head is all there is to read; a head over ``MAX_HEAD`` bytes is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

MAX_HEAD = 16 * 1024


class BadRequest(ValueError):
    """The request head cannot be parsed; the message says what is wrong."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


def parse_head(head: bytes) -> Request:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest("undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"bad request line {lines[0][:100]!r}")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"bad header line {line[:100]!r}")
        headers[name.lower()] = value.strip()
    url = urlsplit(target)
    try:
        query = dict(parse_qsl(url.query, keep_blank_values=True, strict_parsing=False,
                               max_num_fields=32))
    except ValueError as err:
        raise BadRequest(f"bad query string: {err}") from None
    return Request(method, unquote(url.path), query, headers)


def response(status: int, body: bytes, content_type: str = "application/json",
             keep_alive: bool = True) -> bytes:
    reason = HTTPStatus(status).phrase
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n").encode() + body


def json_response(status: int, doc: Any, keep_alive: bool = True) -> bytes:
    return response(status, orjson.dumps(doc) + b"\n", keep_alive=keep_alive)


def error(status: int, code: str, message: str, keep_alive: bool = True, **extra: Any) -> bytes:
    return json_response(status, {"error": code, "message": message, **extra}, keep_alive)


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
               b"Transfer-Encoding: chunked\r\nCache-Control: no-store\r\n"
               b"X-Accel-Buffering: no\r\n\r\n")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)
