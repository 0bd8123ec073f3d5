"""Wire helpers and the error table (pure)."""

from __future__ import annotations

import json

import pytest

from sidecar import http11
from sidecar.errors import CODES, ProxyError, render


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(b"/svc/a/b?x=1", (b"svc", b"/a/b?x=1", b"/a/b", b"x=1"), id="full"),
        pytest.param(b"/svc", (b"svc", b"/", b"/", b""), id="route-only"),
        pytest.param(b"/svc?q", (b"svc", b"/?q", b"/", b"q"), id="route-and-query"),
        pytest.param(b"/svc/", (b"svc", b"/", b"/", b""), id="trailing-slash"),
        pytest.param(b"http://localhost:15001/svc/x", (b"svc", b"/x", b"/x", b""),
                     id="absolute-form"),
        pytest.param(b"*", None, id="asterisk"),
        pytest.param(b"svc/x", None, id="relative"),
    ],
)
def test_split_target(url: bytes, expected: tuple[bytes, ...] | None) -> None:
    assert http11.split_target(url) == expected


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        pytest.param(b"keep-alive", frozenset(), id="keep-alive"),
        pytest.param(b"close", frozenset(), id="close"),
        pytest.param(b"X-Foo, Keep-Alive, x-bar ", frozenset({b"x-foo", b"x-bar"}), id="names"),
    ],
)
def test_connection_tokens(value: bytes, tokens: frozenset[bytes]) -> None:
    assert http11.connection_tokens(value) == tokens


def test_chunk_framing() -> None:
    assert http11.chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        pytest.param("missing_shard_key", 400, id="missing"),
        pytest.param("invalid_shard_key", 400, id="invalid"),
        pytest.param("unknown_route", 404, id="route"),
        pytest.param("body_too_large", 413, id="too-large"),
        pytest.param("upstream_error", 502, id="upstream"),
        pytest.param("shard_unavailable", 503, id="unavailable"),
        pytest.param("shard_map_not_ready", 503, id="not-ready"),
        pytest.param("upstream_timeout", 504, id="timeout"),
    ],
)
def test_spec_error_table(code: str, status: int) -> None:
    assert CODES[code][0] == status
    response = render(ProxyError(code, "why", ordinal=2))
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert (b"Retry-After: 1" in head) == (status == 503)
    assert json.loads(body) == {"error": code, "message": "why", "ordinal": 2}
    assert f"Content-Length: {len(body)}".encode() in head


def test_unknown_code_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown error code 'teapot'"):
        ProxyError("teapot", "no")
