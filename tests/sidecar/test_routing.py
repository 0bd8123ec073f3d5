"""Every request reaches the ordinal that owns its key; errors are the documented ones."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

import pytest

from sidecar.shardfn import STRATEGIES, ordinal_for
from sidecar.shardmap import Shard
from tests.sidecar.backends import Backend
from tests.sidecar.harness import SidecarThread, get_json, request


def route_arg(backends: list[Backend]) -> str:
    return "svc=" + ",".join(b.address for b in backends)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_keys_reach_their_owner(strategy: str, backends: list[Backend],
                                make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", route_arg(backends), "--strategy", strategy)
    keys = [str(i) for i in range(60)] + [f"user-{i}" for i in range(60)] + ["-5", "2" * 30, "日本"]
    for key in keys:
        status, headers, body = get_json(sidecar.port, "/svc/accounts?x=1",
                                         {"X-Shard-Key": key.encode()})  # UTF-8 on the wire
        owner = ordinal_for(key, strategy, 3)  # type: ignore[arg-type]
        assert status == 200
        assert body["ordinal"] == owner, key
        assert body["path"] == "/accounts?x=1"
        assert body["headers"]["x-shard-ordinal"] == str(owner)
        assert body["headers"]["x-shard-count"] == "3"
        assert headers["x-shard-ordinal"] == str(owner)


@pytest.mark.parametrize(
    ("key_flag", "path", "headers", "body", "key"),
    [
        pytest.param("query:account", "/svc/a?b=1&account=77", {}, None, "77", id="query"),
        pytest.param("path:1", "/svc/accounts/123/balance", {}, None, "123", id="path"),
        pytest.param("header:X-Account", "/svc/x", {"x-account": "abc"}, None, "abc",
                     id="header-any-case"),
        pytest.param("json:account.id", "/svc/deposit", {"Content-Type": "application/json"},
                     b'{"account": {"id": 98765432109876543210987654321}, "amount": 5}',
                     "98765432109876543210987654321", id="json-big-int"),
    ],
)
def test_key_sources(key_flag: str, path: str, headers: dict[str, str], body: bytes | None,
                     key: str, backends: list[Backend],
                     make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", route_arg(backends), "--key", key_flag)
    status, _, answer = request(sidecar.port, "POST" if body else "GET", path, headers, body)
    assert status == 200, answer
    decoded = json.loads(answer)
    assert decoded["ordinal"] == ordinal_for(key, "modulo", 3)
    if body:
        assert decoded["body_bytes"] == len(body)  # the body read for the key is still forwarded


def test_integer_key_of_thousands_of_digits_routes(backends: list[Backend],
                                                   make_sidecar: Callable[..., SidecarThread]
                                                   ) -> None:
    """Past CPython's 4300-digit int() limit: routed by its value, not a crashed connection."""
    sidecar = make_sidecar("--route", route_arg(backends))
    for key in ("9" * 5000 + "7", "-" + "1" * 6000):
        status, _, body = get_json(sidecar.port, "/svc/x", {"X-Shard-Key": key})
        assert status == 200, body
        assert body["ordinal"] == ordinal_for(key, "modulo", 3)
    assert ordinal_for("9" * 5000 + "7", "modulo", 3) == 1  # 10**5001 - 3 = 1 (mod 3)


def test_client_cannot_forge_shard_headers(sidecar: SidecarThread) -> None:
    _, _, body = get_json(sidecar.port, "/svc/x",
                          {"X-Shard-Key": "4", "X-Shard-Ordinal": "2", "X-Shard-Count": "9"})
    assert body["headers"]["x-shard-ordinal"] == "1"
    assert body["headers"]["x-shard-count"] == "3"


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        pytest.param("/svc/x", {}, 400, "missing_shard_key", id="no-key"),
        pytest.param("/svc/x", {"X-Shard-Key": ""}, 400, "missing_shard_key", id="empty-key"),
        pytest.param("/other/x", {"X-Shard-Key": "1"}, 404, "unknown_route", id="unknown-route"),
        pytest.param("/", {"X-Shard-Key": "1"}, 404, "unknown_route", id="no-route"),
    ],
)
def test_request_errors(path: str, headers: dict[str, str], status: int, code: str,
                        sidecar: SidecarThread) -> None:
    got, head, body = get_json(sidecar.port, path, headers)
    assert (got, body["error"]) == (status, code)
    assert head["content-type"] == "application/json"
    assert body["message"]


def test_json_body_over_the_limit_is_413(backends: list[Backend],
                                         make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", route_arg(backends), "--key", "json:id",
                           "--max-json-body", "1000")
    status, _, body = request(sidecar.port, "POST", "/svc/x", {},
                              b'{"id": 1, "pad": "' + b"x" * 2000 + b'"}')
    assert status == 413
    assert json.loads(body)["error"] == "body_too_large"
    assert not any(b.seen for b in backends)
    status, _, body = request(sidecar.port, "POST", "/svc/x", {}, b'{"id": 1.5}')
    assert (status, json.loads(body)["error"]) == (400, "invalid_shard_key")


def set_ready(sidecar: SidecarThread, backends: list[Backend], ordinal: int, ready: bool,
              synced: bool = True) -> None:
    shards = [Shard(i, ready=ready if i == ordinal else True, address=("127.0.0.1", b.port),
                    pod=f"svc-{i}") for i, b in enumerate(backends)]
    sidecar.call(lambda: sidecar.sidecar.map.update("svc", count=len(shards), shards=shards,
                                                    synced=synced))


def test_unready_ordinal_gets_503_and_others_are_untouched(
        sidecar: SidecarThread, backends: list[Backend]) -> None:
    set_ready(sidecar, backends, 1, False)
    for key in range(30):
        status, head, body = get_json(sidecar.port, "/svc/x", {"X-Shard-Key": str(key)})
        if key % 3 == 1:
            assert (status, body["error"], body["ordinal"]) == (503, "shard_unavailable", 1)
            assert head["retry-after"] == "1"
        else:
            assert (status, body["ordinal"]) == (200, key % 3)
    assert not backends[1].seen


def test_unsynced_map_is_503_not_ready(sidecar: SidecarThread, backends: list[Backend]) -> None:
    set_ready(sidecar, backends, 0, True, synced=False)
    status, head, body = get_json(sidecar.port, "/svc/x", {"X-Shard-Key": "1"})
    assert (status, body["error"]) == (503, "shard_map_not_ready")
    assert "retry-after" in head


def test_wait_mode_holds_until_ready(backends: list[Backend],
                                     make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", route_arg(backends), "--unavailable", "wait:3000")
    set_ready(sidecar, backends, 2, False)
    threading.Timer(0.3, set_ready, (sidecar, backends, 2, True)).start()
    began = time.monotonic()
    status, _, body = get_json(sidecar.port, "/svc/x", {"X-Shard-Key": "5"})
    assert (status, body["ordinal"]) == (200, 2)
    assert 0.25 < time.monotonic() - began < 2.5


def test_wait_mode_gives_up_after_the_wait(backends: list[Backend],
                                           make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", route_arg(backends), "--unavailable", "wait:300")
    set_ready(sidecar, backends, 2, False)
    began = time.monotonic()
    status, _, body = get_json(sidecar.port, "/svc/x", {"X-Shard-Key": "5"})
    assert (status, body["error"]) == (503, "shard_unavailable")
    assert 0.25 < time.monotonic() - began < 2


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connect_failure_is_502_after_one_retry_to_the_same_ordinal(
        backends: list[Backend], make_sidecar: Callable[..., SidecarThread]) -> None:
    dead = closed_port()
    sidecar = make_sidecar("--route", f"svc={backends[0].address},127.0.0.1:{dead}",
                           "--static-probe", "0")
    status, _, body = get_json(sidecar.port, "/svc/x", {"X-Shard-Key": "1"})
    assert (status, body["error"], body["ordinal"]) == (502, "upstream_error", 1)
    assert f"127.0.0.1:{dead}" in body["message"]
    assert sidecar.sidecar.stats.connect_failures[("svc", "1")] == 2
    assert not backends[0].seen  # never sent to another ordinal


def test_slow_backend_is_504(sidecar: SidecarThread, backends: list[Backend],
                             make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", route_arg(backends), "--timeout", "300ms")
    began = time.monotonic()
    status, _, body = get_json(sidecar.port, "/svc/sleep/2000", {"X-Shard-Key": "0"})
    assert (status, body["error"], body["ordinal"]) == (504, "upstream_timeout", 0)
    assert time.monotonic() - began < 1.5
    status, _, body = get_json(sidecar.port, "/svc/x", {"X-Shard-Key": "0"})
    assert (status, body["ordinal"]) == (200, 0)


def test_backend_hangup_is_502(sidecar: SidecarThread) -> None:
    status, _, body = get_json(sidecar.port, "/svc/hangup", {"X-Shard-Key": "0"})
    assert (status, body["error"]) == (502, "upstream_error")


def test_introspection(sidecar: SidecarThread, backends: list[Backend]) -> None:
    status, _, routes = get_json(sidecar.port, "/_shard/routes")
    assert status == 200
    (route,) = routes["routes"]
    assert (route["route"], route["count"], route["synced"]) == ("svc", 3, True)
    assert [s["address"] for s in route["shards"]] == [b.address for b in backends]
    status, _, info = get_json(sidecar.port, "/_shard/resolve?route=svc&key=user-7")
    owner = ordinal_for("user-7", "modulo", 3)
    assert info == {"route": "svc", "key": "user-7", "strategy": "modulo", "ordinal": owner,
                    "count": 3, "start": 0, "synced": True, "pod": f"svc-{owner}",
                    "address": backends[owner].address, "ready": True}
    status, _, info = get_json(sidecar.port, "/_shard/resolve?route=nope&key=1")
    assert (status, info["error"]) == (404, "unknown_route")
    status, _, info = get_json(sidecar.port, "/_shard/resolve?route=svc")
    assert (status, info["error"]) == (400, "bad_request")


def test_admin_endpoints(sidecar: SidecarThread) -> None:
    get_json(sidecar.port, "/svc/x", {"X-Shard-Key": "2"})
    assert request(sidecar.admin_port, "GET", "/healthz")[0] == 200
    status, _, body = request(sidecar.admin_port, "GET", "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    metrics = request(sidecar.admin_port, "GET", "/metrics")[2].decode()
    assert 'shardmesh_sidecar_requests_total{code="200",ordinal="2",route="svc"} 1.0' in metrics
    assert "shardmesh_sidecar_request_duration_seconds_bucket" in metrics
    assert "shardmesh_sidecar_shard_map_generation" in metrics
    assert "shardmesh_sidecar_shard_map_sync_age_seconds" in metrics


def test_static_probe_marks_a_stopped_backend_unavailable(
        backends: list[Backend], make_sidecar: Callable[..., SidecarThread]) -> None:
    sidecar = make_sidecar("--route", route_arg(backends), "--static-probe", "0.1")
    backends[1].stop()
    deadline = time.monotonic() + 5
    while True:
        status, head, body = get_json(sidecar.port, "/svc/x", {"X-Shard-Key": "1"})
        if status == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (status, body["error"], head.get("retry-after")) == (503, "shard_unavailable", "1")
    status, _, body = get_json(sidecar.port, "/svc/x", {"X-Shard-Key": "2"})
    assert (status, body["ordinal"]) == (200, 2)
    # The 503s are counted against the shard that is down, so a dashboard can name it.
    metrics = request(sidecar.admin_port, "GET", "/metrics")[2].decode()
    assert 'shardmesh_sidecar_requests_total{code="503",ordinal="1",route="svc"}' in metrics
