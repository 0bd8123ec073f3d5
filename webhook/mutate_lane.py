"""A WSGI lane in front of Flask for the one hot request: the API server's review.

Why: on the benchmark (bench/webhook.py: TLS, 2 gevent workers, c=16) Flask's
request machinery (request context, URL adapter, Request and Response objects,
signals) cost about 150 µs of the 670 µs of CPU a review took, twice the review
itself. Skipping it for the review cut the CPU per review by a fifth, and that
is what brought p99 at c=16 under 10 ms.

The lane only takes the exact form the API server sends: ``POST /mutate`` (any
query, such as ``?timeout=10s``), ``Content-Type: application/json`` and a
Content-Length within the cap. Everything else goes on to Flask: other paths
and methods, other media types or parameters, chunked and oversized bodies.
Both ends call the same ``answer(body, started)``, so the status and the JSON of
a given body are the same whichever way it came; the tests run the web layer
both ways.

The lane is installed where Flask documents WSGI middleware,
``app.wsgi_app = MutateLane(app.wsgi_app, ...)``.
"""

from __future__ import annotations

import http
import time
from collections.abc import Callable, Iterable
from typing import Any

Answer = Callable[[bytes, float], tuple[int, bytes]]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

PATH = "/mutate"
MEDIA_TYPE = "application/json"


def plain_length(environ: dict[str, Any], limit: int) -> int | None:
    """The body length if this request is one the lane takes, else ``None``."""
    if (environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST"
            or environ.get("CONTENT_TYPE") != MEDIA_TYPE):
        return None
    length = environ.get("CONTENT_LENGTH") or ""
    if not length.isdigit() or int(length) > limit:
        return None  # chunked or too big: Flask reads, or refuses with a 413
    return int(length)


def status_line(status: int) -> str:
    return f"{status} {http.HTTPStatus(status).phrase}"


class MutateLane:
    """WSGI middleware: answers plain reviews itself, hands the rest to ``app``."""

    def __init__(self, app: WsgiApp, answer: Answer, limit: int) -> None:
        self.app, self.answer, self.limit = app, answer, limit

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        length = plain_length(environ, self.limit)
        if length is None:
            return self.app(environ, start_response)
        started = time.perf_counter()
        status, body = self.answer(environ["wsgi.input"].read(length), started)
        start_response(status_line(status), [("Content-Type", MEDIA_TYPE),
                                             ("Content-Length", str(len(body)))])
        return [body]
