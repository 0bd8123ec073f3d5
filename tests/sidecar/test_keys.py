"""Key extraction (sidecar.keys): pure, no sockets."""

from __future__ import annotations

import pytest

from sidecar.annotations import KEY, parse_key_source
from sidecar.errors import ProxyError
from sidecar.keys import from_header, from_json, from_path, from_query

JSON_ID = parse_key_source(KEY, "json:account.id")


@pytest.mark.parametrize(
    ("body", "key"),
    [
        pytest.param(b'{"account": {"id": "abc"}}', "abc", id="string"),
        pytest.param(b'{"account": {"id": 42}}', "42", id="small-int"),
        pytest.param(b'{"account": {"id": 123456789012345678901234567890}}',
                     "123456789012345678901234567890", id="huge-int-keeps-digits"),
        pytest.param(b'{"account": {"id": -7}}', "-7", id="negative"),
        pytest.param('{"account": {"id": "日本"}}'.encode(), "日本", id="utf8"),
        pytest.param(b'{"account": {"id": "007"}}', "007", id="string-with-zeros-as-is"),
    ],
)
def test_json_key(body: bytes, key: str) -> None:
    assert from_json(body, JSON_ID) == key


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(b'{"account": {"id": 1.5}}', "invalid_shard_key", id="float"),
        pytest.param(b'{"account": {"id": 1e3}}', "invalid_shard_key", id="exponent"),
        pytest.param(b'{"account": {"id": true}}', "invalid_shard_key", id="bool"),
        pytest.param(b'{"account": {"id": null}}', "invalid_shard_key", id="null"),
        pytest.param(b'{"account": {"id": {}}}', "invalid_shard_key", id="object"),
        pytest.param(b'{"account": {"id": [1]}}', "invalid_shard_key", id="array"),
        pytest.param(b'{"account": {}}', "missing_shard_key", id="absent"),
        pytest.param(b'{"account": 5}', "missing_shard_key", id="parent-not-object"),
        pytest.param(b'{"account": {"id": ""}}', "missing_shard_key", id="empty-string"),
        pytest.param(b"", "missing_shard_key", id="empty-body"),
        pytest.param(b"{not json", "invalid_shard_key", id="not-json"),
        pytest.param(b'\xff{"a": 1}', "invalid_shard_key", id="not-utf8"),
    ],
)
def test_json_key_errors(body: bytes, code: str) -> None:
    with pytest.raises(ProxyError) as caught:
        from_json(body, JSON_ID)
    assert caught.value.code == code
    assert "json:account.id" in caught.value.message


def test_json_array_index() -> None:
    source = parse_key_source(KEY, "json:items.1.id")
    assert from_json(b'{"items": [{"id": "a"}, {"id": "b"}]}', source) == "b"


@pytest.mark.parametrize(
    ("query", "key"),
    [
        pytest.param(b"account=42", "42", id="plain"),
        pytest.param(b"x=1&account=a%20b&account=a+b", "a b", id="identical-repeat-decoded"),
        pytest.param(b"account=a+b", "a b", id="plus-is-space"),
        pytest.param(b"account=%E6%97%A5", "日", id="utf8"),
    ],
)
def test_query_key(query: bytes, key: str) -> None:
    assert from_query(query, parse_key_source(KEY, "query:account")) == key


@pytest.mark.parametrize(
    ("query", "code"),
    [
        pytest.param(b"other=1", "missing_shard_key", id="absent"),
        pytest.param(b"account=", "missing_shard_key", id="empty"),
        pytest.param(b"account=%FF", "invalid_shard_key", id="not-utf8"),
        pytest.param(b"account=1&account=2", "ambiguous_shard_key", id="two-values"),
        pytest.param(b"account=1&acc%6Funt=2", "ambiguous_shard_key", id="encoded-name"),
    ],
)
def test_query_key_errors(query: bytes, code: str) -> None:
    with pytest.raises(ProxyError) as caught:
        from_query(query, parse_key_source(KEY, "query:account"))
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("path", "index", "key"),
    [
        pytest.param(b"/accounts/42/balance", 1, "42", id="second"),
        pytest.param(b"/42", 0, "42", id="first"),
        pytest.param(b"/a%2Fb/x", 0, "a/b", id="percent-decoded"),
    ],
)
def test_path_key(path: bytes, index: int, key: str) -> None:
    assert from_path(path, parse_key_source(KEY, f"path:{index}")) == key


@pytest.mark.parametrize(
    "path", [pytest.param(b"/accounts", id="too-short"), pytest.param(b"/accounts//x", id="empty")]
)
def test_path_key_missing(path: bytes) -> None:
    with pytest.raises(ProxyError) as caught:
        from_path(path, parse_key_source(KEY, "path:1"))
    assert caught.value.code == "missing_shard_key"


@pytest.mark.parametrize("path", [b"/accounts/../42", b"/x/42/./y", b"/x/42/%2E%2e", b"/x/42/."])
def test_path_with_dot_segments_is_ambiguous(path: bytes) -> None:
    with pytest.raises(ProxyError) as caught:
        from_path(path, parse_key_source(KEY, "path:1"))
    assert caught.value.code == "ambiguous_shard_key"


def test_path_with_dots_inside_segments_is_fine() -> None:
    assert from_path(b"/a.b/42..x/.x", parse_key_source(KEY, "path:1")) == "42..x"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(b'{"account": {"id": 1, "id": 2}}', "ambiguous_shard_key", id="dup-key"),
        pytest.param(b'{"account": {"id": 1, "id": "1"}}', "ambiguous_shard_key",
                     id="dup-key-other-type"),
        pytest.param(b'{"account": {"id": 1}, "account": {"id": 1, "x": 1}}',
                     "ambiguous_shard_key", id="dup-parent"),
        pytest.param(b'{"account": {"id": 1}, "account": 2, "account": {"id": 1}}',
                     "ambiguous_shard_key", id="dup-three"),
        pytest.param(b'{"account": {"id": "\\ud800"}}', "invalid_shard_key", id="surrogate"),
        pytest.param(b'{"account": {"id": ' + b"[" * 65 + b"]" * 65 + b"}}",
                     "invalid_shard_key", id="too-deep"),
        pytest.param(b"[" * 200000, "invalid_shard_key", id="too-deep-unclosed"),
    ],
)
def test_json_ambiguity_and_limits(body: bytes, code: str) -> None:
    with pytest.raises(ProxyError) as caught:
        from_json(body, JSON_ID)
    assert caught.value.code == code


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"account": {"id": 7, "id": 7}, "x": 1, "x": 2}', id="dups-harmless"),
        pytest.param(b'{"account": {"id": 7, "s": "' + b"[" * 500 + b'"}}', id="brackets-in-str"),
        pytest.param(b'{"account": {"id": 7}, "a": ' + b"[" * 60 + b"]" * 60 + b"}",
                     id="deep-but-within-limit"),
    ],
)
def test_json_keys_that_are_fine(body: bytes) -> None:
    assert from_json(body, JSON_ID) == "7"


def test_header_key_lists_are_ambiguous() -> None:
    source = parse_key_source(KEY, "header:X-Shard-Key")
    with pytest.raises(ProxyError) as caught:
        from_header(b"1, 2", source)
    assert caught.value.code == "ambiguous_shard_key"
    assert "'1' and '2'" in caught.value.message


def test_header_key_strips_whitespace_and_rejects_bad_utf8() -> None:
    source = parse_key_source(KEY, "header:X-Shard-Key")
    assert from_header(b"  42 ", source) == "42"
    with pytest.raises(ProxyError) as caught:
        from_header(b"\xff", source)
    assert caught.value.code == "invalid_shard_key"
    with pytest.raises(ProxyError) as caught:
        from_header(None, source)
    assert caught.value.code == "missing_shard_key"
