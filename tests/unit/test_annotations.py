"""The shared annotation schema: what parses, what is refused, and how the message reads."""

from __future__ import annotations

import pytest

from sidecar import annotations as ann
from sidecar import downward, pod_checks
from sidecar.annotations import AnnotationError, Backend, KeySource


@pytest.mark.parametrize(("value", "expected"), [
    pytest.param("sharded-svc", [Backend("sharded-svc", "sharded-svc", "app", None)], id="bare"),
    pytest.param("backend=sharded-svc:8080",
                 [Backend("backend", "sharded-svc", "app", 8080)], id="route-and-port"),
    pytest.param("db.other:5432, cache=kv",
                 [Backend("db", "db", "other", 5432), Backend("cache", "kv", "app", None)],
                 id="namespace-and-list"),
])
def test_backend_forms(value: str, expected: list[Backend]) -> None:
    assert list(ann.parse_backends(value, "app")) == expected


@pytest.mark.parametrize(("value", "why"), [
    pytest.param("a,,b", "empty entry", id="empty-entry"),
    pytest.param("svc:0", "port '0' is not in 1..65535", id="port-zero"),
    pytest.param("svc:http", "port 'http' is not in 1..65535", id="port-name"),
    pytest.param("Svc", "statefulset 'Svc' is not a valid DNS-1123 label", id="uppercase"),
    pytest.param("=svc", "empty route name", id="empty-route"),
    pytest.param("a=svc,a=other", "route 'a' is declared twice", id="duplicate-route"),
])
def test_bad_backends_name_annotation_and_value(value: str, why: str) -> None:
    with pytest.raises(AnnotationError) as err:
        ann.parse_backends(value, "app")
    assert str(err.value).startswith(f"invalid value '{value}' for annotation 'shard.io/backend'")
    assert why in str(err.value)


def test_per_route_option_beats_global_and_defaults_fill_in() -> None:
    routes = ann.parse_routes({
        ann.BACKEND: "a=s1,b=s2", ann.STRATEGY: "jump", f"{ann.STRATEGY}.b": "rendezvous",
        f"{ann.KEY}.a": "json:account.id", ann.UNAVAILABLE: "wait:250", ann.TIMEOUT: "1.5s",
    }, "app")
    a, b = routes
    assert (a.strategy, b.strategy) == ("jump", "rendezvous")
    assert a.key == KeySource("json", name="account.id", path=("account", "id"))
    assert b.key == KeySource("header", name="X-Shard-Key")
    assert (a.wait_ms, a.timeout_s) == (250, 1.5)


@pytest.mark.parametrize(("annotations", "key", "why"), [
    pytest.param({ann.STRATEGY: "consistent"}, ann.STRATEGY, "expected one of", id="strategy"),
    pytest.param({ann.KEY: "cookie:id"}, ann.KEY, "unknown key source", id="key-kind"),
    pytest.param({ann.TIMEOUT: "0s"}, ann.TIMEOUT, "more than 0", id="timeout-zero"),
    pytest.param({ann.UNAVAILABLE: "wait:0"}, ann.UNAVAILABLE, "1 to 60000", id="wait-zero"),
    pytest.param({"shard.io/stratgy": "jump"}, "shard.io/stratgy", "unknown", id="typo"),
    pytest.param({ann.BACKEND: "a=s", f"{ann.KEY}.b": "query:id"}, f"{ann.KEY}.b",
                 "no route 'b'", id="undeclared-route"),
    pytest.param({ann.MEMORY_REQUEST: "1Gi", ann.MEMORY_LIMIT: "128Mi"}, ann.MEMORY_REQUEST,
                 "exceeds", id="request-over-limit"),
    pytest.param({ann.MAX_CONNECTIONS: "0"}, ann.MAX_CONNECTIONS, "from 1 to 100000",
                 id="max-connections-zero"),
    pytest.param({ann.MAX_CONNECTIONS: "1e3"}, ann.MAX_CONNECTIONS, "integer",
                 id="max-connections-not-integer"),
    pytest.param({ann.BACKEND: "a=s", f"{ann.MAX_CONNECTIONS}.a": "10"},
                 f"{ann.MAX_CONNECTIONS}.a", "unknown", id="max-connections-per-route"),
])
def test_validate_pod_refuses_with_the_offending_annotation(
        annotations: dict[str, str], key: str, why: str) -> None:
    with pytest.raises(AnnotationError) as err:
        pod_checks.validate_pod(annotations, "app")
    assert err.value.key == key and why in str(err.value)
    assert f"'{annotations[key]}'" in str(err.value)


def test_downward_file_round_trip_with_go_escapes() -> None:
    values = {"a": 'say "hi"\n', "shard.io/backend": "x=y:1", "b": "tab\there", "c": "日本"}
    assert downward.parse_downward_file(downward.format_downward_file(values)) == values
    # What the kubelet (Go %q) writes for a bell, a vertical tab and a raw byte escape.
    assert downward.parse_downward_file('k="\\a\\v\\x41\\\\x41"\n') == {"k": "\a\vA\\x41"}
    with pytest.raises(ValueError, match="line 1"):
        downward.parse_downward_file("k=unquoted\n")


def test_max_connections_is_pod_wide_and_optional() -> None:
    assert ann.max_connections({}) is None
    assert ann.max_connections({ann.MAX_CONNECTIONS: "500"}) == 500
    assert pod_checks.validate_pod({ann.BACKEND: "s", ann.MAX_CONNECTIONS: "100000"}, "app")


def test_max_connections_past_python_int_digit_limit_is_an_annotation_error() -> None:
    # int() refuses over 4300 digits with a ValueError: the length is checked first.
    with pytest.raises(AnnotationError, match="from 1 to 100000"):
        ann.max_connections({ann.MAX_CONNECTIONS: "9" * 5000})
