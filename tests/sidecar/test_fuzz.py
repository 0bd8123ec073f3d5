"""Fuzzing (Hypothesis) of what clients and pod authors control: request bytes,
key sources, and annotations. Short under ``make test``; ``make fuzz`` runs long.

Properties:
- A request the sidecar forwards reaches the backend with exactly the client's
  header fields minus the hop-by-hop ones, plus X-Shard-Ordinal, X-Shard-Count
  and the framing it re-makes; the body unchanged.
- A request it refuses gets a 4xx/501/505 and nothing of it reaches the backend.
- Every complete (or malformed) request is answered; nothing crashes.
- The key and annotation parsers return a value or raise their documented
  error, never another exception.
"""

from __future__ import annotations

import itertools
import json
import socket
import string
from collections.abc import Callable, Iterator
from typing import Any

import httptools
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sidecar import annotations as ann
from sidecar import downward, http11, keys, pod_checks
from sidecar.errors import ProxyError
from sidecar.settings import Settings
from sidecar.shardfn import ordinal_for
from tests.sidecar.fuzzing import FUZZ
from tests.sidecar.harness import SidecarThread, settings_from_args
from tests.sidecar.recorder import Recorder

pytestmark = pytest.mark.fuzz

KEY_CODES = {"missing_shard_key", "invalid_shard_key", "ambiguous_shard_key"}
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
              b"transfer-encoding", b"upgrade", b"expect", b"content-length",
              b"x-shard-ordinal", b"x-shard-count"}

# --- pure parsers -----------------------------------------------------------------------

sources = st.sampled_from(["header:X-Shard-Key", "query:key", "path:0", "path:2",
                           "json:id", "json:a.b", "json:items.1"]).map(
    lambda v: ann.parse_key_source(ann.KEY, v))
json_bodies = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "a", "b", "items", "1"]), inner, max_size=4),
    max_leaves=12,
).map(lambda doc: json.dumps(doc).encode())


def _key_or_error(extract: Callable[[], str]) -> None:
    try:
        key = extract()
    except ProxyError as err:
        assert err.code in KEY_CODES, err.code
        assert err.status == 400
        return
    assert isinstance(key, str) and key
    key.encode("utf-8")  # hashable as UTF-8: routable by every strategy
    for strategy in ("modulo", "jump", "rendezvous"):
        assert 0 <= ordinal_for(key, strategy, 3) < 3


@FUZZ
@given(source=sources, body=st.binary(max_size=300) | json_bodies | st.builds(
    lambda n, c: c[0] * n + c[1] * n, st.integers(0, 3000),
    st.sampled_from(["[]", "{}"]).map(lambda s: (s[0].encode(), s[1].encode()))))
def test_key_extraction_never_raises_anything_else(source: ann.KeySource, body: bytes) -> None:
    _key_or_error(lambda: keys.from_json(body, source))
    _key_or_error(lambda: keys.from_query(body, source))
    _key_or_error(lambda: keys.from_path(b"/" + body, source))
    _key_or_error(lambda: keys.from_header(body, source))


@FUZZ
@given(value=st.binary(max_size=40) | st.lists(
    st.sampled_from([b"chunked", b"gzip", b" ", b"", b"Chunked", b"identity"]), max_size=4,
).map(b",".join), http10=st.booleans())
def test_transfer_encoding_check(value: bytes, http10: bool) -> None:
    error = http11.check_transfer_encoding(value, http10)
    codings = [c.strip(b" \t").lower() for c in value.split(b",")]
    if error is None:
        assert codings == [b"chunked"] and not http10
    else:
        assert error.status in (400, 501)


# --- annotations --------------------------------------------------------------------------

annotation_text = st.text(max_size=30) | st.sampled_from(
    ["header:X-Id", "query:k", "path:3", "json:a.b", "json:a..b", "path:" + "9" * 5000,
     "wait:" + "9" * 5000, "wait:10", "jump", "30s", "0ms", "1e3s", "99999999m", "100m",
     "64Mi", "1e400", ".5", "db", "db.ns:8080", "r=db.ns:1,r=x", "true", "fail"])
annotation_names = st.sampled_from(sorted(ann.KNOWN) + [
    f"{option}.{route}" for option in ann.ROUTE_OPTIONS for route in ("db", "other")] + [
    "shard.io/unknown", "example.io/timeout.db", "other.io/key.x"])
SINGLE_VALUE_PARSERS: list[Callable[[str, str], Any]] = [
    ann.parse_bool, ann.parse_key_source, ann.parse_strategy, ann.parse_unavailable,
    ann.parse_duration, pod_checks.parse_quantity]


@FUZZ
@given(value=annotation_text, parser=st.sampled_from(SINGLE_VALUE_PARSERS))
def test_annotation_values_parse_or_name_themselves(value: str,
                                                    parser: Callable[[str, str], Any]) -> None:
    try:
        parser("shard.io/x", value)
    except ann.AnnotationError as err:
        assert (err.key, err.value) == ("shard.io/x", value)
        assert f"'{ann.clip(value)}'" in str(err) and "'shard.io/x'" in str(err)


@FUZZ
@given(annotations=st.dictionaries(annotation_names, annotation_text, max_size=6),
       backend=st.none() | annotation_text | st.sampled_from(["db", "db,other", "r=db.ns:99"]))
def test_pod_annotations_parse_or_name_the_culprit(annotations: dict[str, str],
                                                   backend: str | None) -> None:
    if backend is not None:
        annotations[ann.BACKEND] = backend
    try:
        routes = pod_checks.validate_pod(annotations, "ns")
    except ann.AnnotationError as err:
        assert annotations.get(err.key) == err.value or err.key not in annotations and \
            err.value in {ann.DEFAULT_KEY, ann.DEFAULT_STRATEGY, ann.DEFAULT_UNAVAILABLE,
                          ann.DEFAULT_TIMEOUT, *ann.DEFAULT_RESOURCES.values()}, err
        return
    for route in routes:
        assert route.timeout_s > 0 and route.wait_ms >= 0


@FUZZ
@given(st.text(max_size=60))
def test_downward_file_parses_or_raises_value_error(text: str) -> None:
    try:
        parsed = downward.parse_downward_file(text)
    except ValueError as err:
        assert "line " in str(err)
        return
    assert downward.parse_downward_file(downward.format_downward_file(parsed)) == parsed


def test_other_vendors_annotations_are_not_ours() -> None:
    """``example.io/timeout.db`` is not ``shard.io/timeout.db`` (found by fuzzing)."""
    routes = pod_checks.validate_pod({ann.BACKEND: "db", "example.io/timeout.other": "x"}, "ns")
    assert [r.name for r in routes] == ["db"]


@pytest.mark.parametrize(("parser", "value"), [
    (ann.parse_key_source, "path:" + "9" * 5000),
    (ann.parse_unavailable, "wait:" + "9" * 5000),
])
def test_huge_numbers_are_annotation_errors(parser: Callable[[str, str], Any],
                                            value: str) -> None:
    """Past CPython's 4300-digit int() limit (found by fuzzing)."""
    with pytest.raises(ann.AnnotationError):
        parser("shard.io/x", value)


# --- the whole request path, over sockets ------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[tuple[SidecarThread, Recorder]]:
    recorder = Recorder().start()
    settings: Settings = settings_from_args(["--route", f"svc={recorder.address}",
                                             "--static-probe", "0", "--timeout", "2s"])
    sidecar = SidecarThread(settings).start()
    yield sidecar, recorder
    sidecar.stop()
    recorder.stop()


_counter = itertools.count()
token_chars = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
names = st.sampled_from([
    "Host", "host", "X-Shard-Key", "x-shard-key", "Content-Length", "Transfer-Encoding",
    "Connection", "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Authorization",
    "Proxy-Foo", "Expect", "X-Shard-Ordinal", "X-Shard-Count", "Authorization", "Cookie",
    "X-Forwarded-For", "Via", "X-A", "X-B"]) | st.text(token_chars, min_size=1, max_size=12)
values = st.sampled_from([
    "1", "2", "1, 2", "chunked", "gzip, chunked", "close", "keep-alive", "X-A", "X-A, close",
    "100-continue", "h2c", "", " 7 ", "trailers", "5", "-1", "x"]) | st.text(
    string.ascii_letters + string.digits + " ,;=:/\t", max_size=16)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bytes]], bytes, str]:
    """(request bytes, client header fields, body, version): mostly well-formed."""
    version = draw(st.sampled_from(["1.1", "1.1", "1.1", "1.0"]))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    fields = [(n.encode(), v.encode()) for n, v in draw(st.lists(st.tuples(names, values),
                                                                 max_size=8))]
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), (b"Host", b"x"))
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), (b"X-Shard-Key", b"7"))
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["as-drawn", "length", "chunked", "none"]))
    lnames = {n.lower() for n, _ in fields}
    if framing == "length" and b"content-length" not in lnames:
        fields.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "chunked" and b"transfer-encoding" not in lnames:
        fields.append((b"Transfer-Encoding", b"chunked"))
    chunked = any(n.lower() == b"transfer-encoding" for n, _ in fields)
    lengths = [v for n, v in fields if n.lower() == b"content-length"]
    if chunked:
        trailer = draw(st.sampled_from([b"", b"X-Shard-Key: 9\r\n", b"Authorization: t\r\n"]))
        payload = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n" + \
            trailer + b"\r\n"
    elif lengths and lengths[0].strip().isdigit() and int(lengths[0]) <= len(body):
        body = body[:int(lengths[0])]
        payload = body
    else:
        body = payload = b""
    path = f"/svc/f{next(_counter)}"
    head = f"{method} {path} HTTP/{version}\r\n".encode() + b"".join(
        n + b": " + v + b"\r\n" for n, v in fields)
    return head + b"\r\n" + payload, fields, body, path


def _reference(data: bytes) -> str:
    """What a plain llhttp makes of the bytes: "complete" (a first request is),
    "error" or "partial"."""
    done: list[bool] = []

    class Callbacks:
        def on_message_complete(self) -> None:
            done.append(True)

    try:
        httptools.HttpRequestParser(Callbacks()).feed_data(data)
    except httptools.HttpParserUpgrade:
        return "complete"
    except httptools.HttpParserError:
        return "complete" if done else "error"
    return "complete" if done else "partial"


def _exchange(port: int, data: bytes) -> tuple[int, bytes] | None:
    """Send ``data`` and read one response (status, body), or None if none came."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(data)
        got: dict[str, Any] = {"body": b""}

        class Callbacks:
            def on_body(self, body: bytes) -> None:
                if "done" not in got:  # later responses (to bytes after the request) aside
                    got["body"] += body

            def on_message_complete(self) -> None:
                if parser.get_status_code() >= 200:  # a 100 Continue is not the answer
                    got.setdefault("done", parser.get_status_code())

        parser = httptools.HttpResponseParser(Callbacks())
        try:
            while "done" not in got:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                parser.feed_data(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        if "done" not in got:
            return None
        return got["done"], got["body"]


def _expected_headers(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    named = set()
    for name, value in fields:
        if name.lower() == b"connection":
            named |= {t.strip().lower() for t in value.split(b",")}
    return [(n, v.strip(b" \t")) for n, v in fields
            if n.lower() not in HOP_BY_HOP and n.lower() not in named
            and not n.lower().startswith(b"proxy-")]


@FUZZ
@given(request=requests(), mutation=st.none() | st.tuples(st.integers(0, 400), st.binary(
    max_size=2)))
def test_forwarded_exactly_or_refused_with_nothing_sent(
        request: tuple[bytes, list[tuple[bytes, bytes]], bytes, str],
        mutation: tuple[int, bytes] | None,
        fuzz_target: tuple[SidecarThread, Recorder]) -> None:
    sidecar, recorder = fuzz_target
    data, fields, body, path = request
    if mutation is not None:  # a byte replaced or inserted somewhere: the property is weaker
        at, new = mutation
        at %= len(data)
        data = data[:at] + new + data[at + 1:]
    reference = _reference(data)
    assume(reference != "partial")  # an incomplete request is (rightly) waited for
    before = len(recorder.requests)
    answer = _exchange(sidecar.port, data)
    assert answer is not None, f"no answer to {data!r}"
    status, response_body = answer
    reached = recorder.requests[before:]  # one connection at a time: all of it is this one's
    if status >= 400:
        assert status in (400, 404, 408, 413, 414, 417, 431, 501, 505), (status, response_body)
        assert json.loads(response_body)["error"]
        assert reached == [], f"refused with {status} but forwarded: {data!r}"
        return
    assert status == 200 and response_body == b"ok", (status, response_body)
    assert reference == "complete"
    if mutation is not None:
        assert reached, data
        return
    assert len(reached) == 1, data
    got = reached[0]
    assert got.target == path.removeprefix("/svc").encode()
    ours = [(n, v) for n, v in got.headers
            if n.lower() in (b"x-shard-ordinal", b"x-shard-count", b"transfer-encoding",
                             b"content-length")]
    # OWS around a value is not part of it (RFC 9110 §5.5): llhttp keeps trailing OWS.
    theirs = [(n, v.strip(b" \t")) for n, v in got.headers if (n, v) not in ours]
    assert theirs == _expected_headers(fields), data
    assert (b"X-Shard-Ordinal", b"0") in ours and (b"X-Shard-Count", b"1") in ours
    assert got.body == body
    assert got.trailers == []


def test_downward_file_escape_past_unicode_names_its_line() -> None:
    """``\\U00110000`` is past U+10FFFF (found by reading what fuzzing pointed at)."""
    with pytest.raises(ValueError, match="line 2"):
        downward.parse_downward_file('a="x"\nb="\\U00110000"\n')


@pytest.mark.parametrize("value", ["h:²", "h:" + "9" * 5000])
def test_listen_ports_that_int_refuses_are_settings_errors(value: str) -> None:
    from sidecar.settings import SettingsError, parse_hostport

    with pytest.raises(SettingsError):
        parse_hostport("--listen", value)
