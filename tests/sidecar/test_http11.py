"""Wire helpers and the error table (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
        pytest.param(b"/", (b"", b"/", b"/", b""), id="root"),
        pytest.param(b"/svc/a?b?c", (b"svc", b"/a?b?c", b"/a", b"b?c"), id="second-question-mark"),
        pytest.param(b"/svc?a/b", (b"svc", b"/?a/b", b"/", b"a/b"), id="slash-in-query"),
        pytest.param(b"http://h", (b"", b"/", b"/", b""), id="absolute-no-path"),
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


# --- header names: the fast screen must agree with the plain rule --------------

_NAMES = sorted(http11.REQUEST_SPECIAL | http11.RESPONSE_SPECIAL | {
    b"host", b"x-shard-key", b"content-type", b"server", b"date", b"proxy-foo", b"proxy-",
    b"tex", b"trailers", b"connections", b"x-shard-ordinals", b"accept",
})


@given(st.sampled_from(_NAMES), st.lists(st.booleans(), min_size=32, max_size=32))
def test_special_names_agree_with_lower_and_compare(lname: bytes, flips: list[bool]) -> None:
    """Any spelling of any name: the slot table says what lower() and a set lookup say."""
    name = bytes(c ^ 0x20 if 0x61 <= c <= 0x7A and flip else c
                 for c, flip in zip(lname, flips + [False] * len(lname), strict=False))
    request = lname if lname in http11.REQUEST_SPECIAL or lname.startswith(b"proxy-") else b""
    response = lname if lname in http11.RESPONSE_SPECIAL else b""
    assert http11.request_special(name) == request
    assert http11.response_special(name) == response


@pytest.mark.parametrize("name", [b"", b"x" * 200, b"-", b"\xff" * 10])
def test_special_names_odd_input(name: bytes) -> None:
    assert http11.request_special(name) == b""
    assert http11.response_special(name) == b""


def test_scan_head_finds_any_spelling_and_a_second_value() -> None:
    head = [b"", b"Host", b": ", b"a", b"\r\n", b"x-SHARD-key", b": ", b"7", b"\r\n",
            b"X-Shard-Key", b": ", b" 7 ", b"\r\n", b"HOST", b": ", b"b", b"\r\n",
            b"X-SHARD-KEY", b": ", b"8", b"\r\n"]
    assert http11.scan_head(head, b"x-shard-key", b"X-Shard-Key") == (2, b"b", b"7", b"8")
    assert http11.scan_head(head[:10], b"x-shard-key", b"X-Shard-Key") == (1, b"a", b"7", None)
    assert http11.scan_head(head, b"x-tenant", b"X-Tenant") == (2, b"b", None, None)
    assert http11.scan_head(head, b"", b"") == (2, b"b", None, None)
    assert http11.title_case(b"x-shard-key") == b"X-Shard-Key"
