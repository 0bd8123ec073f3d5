"""Slot mode in the sidecar (SPEC §6), in process: the map is fed as discovery would feed it.

The backends are the reference ``AccountsBackend`` (it refuses a slot it does not
own with 421 and its epoch, and checks the fencing headers) and the echoing test
``Backend`` (to see the headers as sent).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shardmesh.accounts_backend import AccountsBackend
from sidecar.annotations import parse_routes
from sidecar.discovery import snapshot, statefulset_info
from sidecar.errors import ProxyError
from sidecar.shardfn import ordinal_for
from sidecar.shardmap import RouteState, Shard, ShardMap
from sidecar.slot_routing import fencing_headers
from sidecar.slot_state import fences, next_slots, resolve_slot
from sidecar.slots import Assignment, Migration, SlotMap, parse, parse_assignment
from tests.sidecar.backends import Backend
from tests.sidecar.harness import SidecarThread, get_json, request

S = 8
FIRST = "0-3:0,4-7:1"
SPEC = parse_routes({"shard.io/backend": "acct:8080", "shard.io/key": "path:1"}, "shop")[0]


def smap(epoch: int, assignment: str | None = FIRST, migrating: str = "") -> SlotMap:
    annotations = {"shard.io/slots": str(S), "shard.io/epoch": str(epoch)}
    if assignment is not None:
        annotations["shard.io/assignment"] = assignment
    if migrating:
        annotations["shard.io/migrating"] = migrating
    parsed = parse(annotations)
    assert parsed is not None
    return parsed


def account_in(slot: int) -> str:
    return next(str(n) for n in range(1000) if ordinal_for(str(n), "modulo", S) == slot)


# --- the pure parts -----------------------------------------------------------------------


def test_next_slots_keeps_the_last_good_map_and_says_why() -> None:
    one, two = smap(1), smap(2, "0-2:0,3-7:1")
    assert next_slots(None, None, "") == (None, False, "")  # default mode
    assert next_slots(None, one, "") == (one, True, "")
    assert next_slots(one, two, "") == (two, True, "")
    kept, mode, why = next_slots(two, one, "")
    assert (kept, mode) == (two, True) and why == (
        "shard.io/epoch went back from 2 to 1; keeping the map at epoch 2")
    kept, mode, why = next_slots(one, None, "invalid value 'x' for annotation 'shard.io/slots'")
    assert (kept, mode) == (one, True) and why.endswith("keeping the map at epoch 1")
    kept, mode, why = next_slots(None, None, "bad")
    assert (kept, mode, why) == (None, True, "bad; no good map yet, nothing is routed")
    assert "S is fixed" in next_slots(one, SlotMap(16, None, 3), "")[2]


def test_fences_are_the_published_fencing_headers() -> None:
    m = smap(7)
    pre = fences(m, [0, 1])
    for slot in range(S):
        owner = m.owner(slot)
        assert owner is not None
        assert b"X-Shard-Slot: %d\r\n" % slot + pre[owner] == fencing_headers(m, slot, owner)
    assert fences(None, [0]) == {}


def state_of(m: SlotMap | None, ready: tuple[bool, ...] = (True, True), start: int = 0,
             slot_problem: str = "") -> RouteState:
    shards = tuple(Shard(start + i, r, ("127.0.0.1", 1 + i), f"acct-{start + i}")
                   for i, r in enumerate(ready))
    return RouteState(SPEC, synced=True, count=len(shards), start=start, shards=shards,
                      slotted=True, slotmap=m, slot_problem=slot_problem)


def error_of(state: RouteState, key: str) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        resolve_slot(state, key)
    return caught.value


def test_resolve_slot_names_the_owner_and_every_reason_not_to_send() -> None:
    m = smap(3)
    for slot in range(S):
        shard, got, fence = resolve_slot(state_of(m), account_in(slot))
        assert (got, shard.ordinal) == (slot, 0 if slot < 4 else 1)
        assert fence == fencing_headers(m, slot, shard.ordinal)
    err = error_of(state_of(smap(1, None)), "5")
    assert err.code == "shard_map_not_ready"
    assert "run 'shardmesh reshard acct -n shop --init'" in err.message
    err = error_of(state_of(smap(4, migrating="4-5:1>0")), account_in(5))
    assert err.code == "shard_unavailable" and err.details["moving"] is True
    assert "slot 5 of route 'acct' is moving from ordinal 1 to 0 (epoch 4)" in err.message
    err = error_of(state_of(smap(4, "0-3:0,4-7:2")), account_in(6))
    assert err.code == "shard_unavailable" and "ordinal 2, which is not one of" in err.message
    err = error_of(state_of(m, ready=(True, False)), account_in(6))
    assert err.code == "shard_unavailable" and "owner of slot 6, is not ready" in err.message
    err = error_of(state_of(None, slot_problem="bad; no good map yet"), "1")
    assert err.code == "shard_map_not_ready" and "bad; no good map yet" in err.message
    # ordinals.start: the assignment names pod ordinals, shards[i] is pod start + i
    shard, _, _ = resolve_slot(state_of(smap(1, "0-3:1,4-7:2"), start=1), account_in(4))
    assert shard.ordinal == 2 and shard.address == ("127.0.0.1", 2)


def sts(annotations: dict[str, str], start: int = 0) -> dict[str, Any]:
    return {"metadata": {"name": "acct", "annotations": annotations},
            "spec": {"replicas": 2, "ordinals": {"start": start}, "template": {"spec": {
                "containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]}}}}


def test_discovery_parses_the_slot_annotations() -> None:
    info = statefulset_info(sts({"shard.io/slots": "8", "shard.io/assignment": FIRST,
                                 "shard.io/epoch": "2"}))
    assert info.slots == smap(2) and info.slot_error == ""
    shot = snapshot(SPEC, info, [])
    assert (shot.slots, shot.slot_error, shot.keep_slots) == (smap(2), "", False)
    info = statefulset_info(sts({"shard.io/slots": "8", "shard.io/assignment": "0-3:0"}))
    assert info.slots is None and "4 of 8 slots have no owner" in info.slot_error
    info = statefulset_info(sts({"shard.io/slots": "8", "shard.io/assignment": FIRST}, start=1))
    assert "ordinal 0 is below spec.ordinals.start 1" in info.slot_error
    assert statefulset_info(sts({})).slots is None and statefulset_info(sts({})).slot_error == ""
    assert not snapshot(SPEC, None, []).keep_slots  # deleted: forget its map
    bad_start = statefulset_info(sts({"shard.io/slots": "8"}, start=-1))
    assert snapshot(SPEC, bad_start, []).keep_slots  # annotations unread: keep the map


def test_shard_map_keeps_the_last_good_map_and_shows_the_problem() -> None:
    shard_map = ShardMap()
    shard_map.set_specs([SPEC])
    shards = [Shard(0, True, ("h", 1)), Shard(1, True, ("h", 2))]
    shard_map.update("acct", count=2, shards=shards, slots=smap(2))
    state = shard_map.get("acct")
    assert state is not None and state.slotmap == smap(2) and state.fences[1].endswith(
        b"X-Shard-Ordinal: 1\r\n")
    shard_map.update("acct", count=2, shards=shards, slots=smap(1))  # the epoch went back
    state = shard_map.get("acct")
    assert state is not None and state.slotmap == smap(2)
    route = shard_map.describe()["routes"][0]
    assert route["problem"] == "shard.io/epoch went back from 2 to 1; keeping the map at epoch 2"
    assert (route["mode"], route["slots"], route["epoch"], route["migrating"]) == (
        "slots", 8, 2, None)
    assert route["assignment"] == {"ranges": FIRST, "slots_per_ordinal": {"0": 4, "1": 4}}
    shard_map.update("acct", count=2, shards=shards, keep_slots=True, problem="gone")
    assert shard_map.get("acct").slotmap == smap(2)  # type: ignore[union-attr]
    shard_map.update("acct", count=2, shards=shards, slots=smap(3, migrating="0-1:0>1"))
    route = shard_map.describe()["routes"][0]
    assert (route["epoch"], route["migrating"], route["problem"]) == (3, "0-1:0>1", None)
    shard_map.update("acct", count=2, shards=shards)  # shard.io/slots removed: default mode
    assert shard_map.describe()["routes"][0]["mode"] == "default"


# --- the data plane -----------------------------------------------------------------------


@pytest.fixture
def accounts() -> Iterator[list[AccountsBackend]]:
    backends = [AccountsBackend("127.0.0.1", 0, o, name=f"acct-{o}") for o in (0, 1)]
    for backend in backends:
        backend.ledger.seed(S, FIRST)
        backend.start()
    yield backends
    for backend in backends:
        backend.stop()


def feed(sidecar: SidecarThread, m: SlotMap | None, addresses: list[tuple[str, int]],
         ready: tuple[bool, ...] = (True, True)) -> None:
    shards = [Shard(o, r, a, f"acct-{o}") for o, (a, r) in enumerate(zip(addresses, ready,
                                                                        strict=True))]
    sidecar.call(lambda: sidecar.sidecar.map.update("acct", count=len(shards), shards=shards,
                                                    slots=m))


def addresses_of(backends: list[AccountsBackend]) -> list[tuple[str, int]]:
    return [(b.server.server_address[0], b.server.server_address[1])  # type: ignore[misc]
            for b in backends]


def slot_sidecar(make: Callable[..., SidecarThread], backends: list[AccountsBackend],
                 *extra: str) -> SidecarThread:
    sidecar = make("--route", "acct=" + ",".join(b.address for b in backends),
                   "--key", "path:1", *extra)
    feed(sidecar, smap(1), addresses_of(backends))
    return sidecar


def deposit(sidecar: SidecarThread, account: str, body: bytes | None = None,
            ) -> tuple[int, dict[str, str], Any]:
    status, head, raw = request(sidecar.port, "POST", f"/acct/accounts/{account}/deposit",
                                body=body if body is not None else b"")
    return status, head, json.loads(raw)


def metric(sidecar: SidecarThread, line: str) -> float:
    _, _, text = request(sidecar.admin_port, "GET", "/metrics")
    for row in text.decode().splitlines():
        if row.startswith(line + " "):
            return float(row.split()[-1])
    return 0.0


def test_fencing_headers_replace_the_count(make_sidecar: Callable[..., SidecarThread]) -> None:
    echo = [Backend(ordinal=o).start() for o in (0, 1)]
    try:
        sidecar = make_sidecar("--route", "acct=" + ",".join(b.address for b in echo),
                               "--key", "path:1")
        feed(sidecar, smap(5), [("127.0.0.1", b.port) for b in echo])
        for slot in range(S):
            account = account_in(slot)
            status, head, body = get_json(sidecar.port, f"/acct/accounts/{account}")
            owner = 0 if slot < 4 else 1
            assert (status, body["ordinal"], head["x-shard-ordinal"]) == (200, owner, str(owner))
            seen = body["headers"]
            assert (seen["x-shard-slot"], seen["x-shard-slots"], seen["x-shard-epoch"],
                    seen["x-shard-ordinal"]) == (str(slot), "8", "5", str(owner))
            assert "x-shard-count" not in seen
            _, _, info = get_json(sidecar.port, f"/_shard/resolve?route=acct&key={account}")
            assert (info["slot"], info["slots"], info["epoch"], info["ordinal"],
                    info["ready"]) == (slot, 8, 5, owner, True)
        assert metric(sidecar, 'shardmesh_sidecar_slot_map_epoch{route="acct"}') == 5
    finally:
        for backend in echo:
            backend.stop()


def test_no_assignment_is_not_ready_and_a_bad_map_keeps_the_last_good(
        make_sidecar: Callable[..., SidecarThread], accounts: list[AccountsBackend]) -> None:
    sidecar = make_sidecar("--route", "acct=" + ",".join(b.address for b in accounts),
                           "--key", "path:1")
    feed(sidecar, smap(0, None), addresses_of(accounts))
    status, head, body = deposit(sidecar, "1")
    assert (status, body["error"]) == (503, "shard_map_not_ready") and "--init" in body["message"]
    feed(sidecar, smap(1), addresses_of(accounts))
    assert deposit(sidecar, "1")[0] == 200
    sidecar.call(lambda: sidecar.sidecar.map.update(
        "acct", count=2, shards=[Shard(o, True, a) for o, a in enumerate(addresses_of(accounts))],
        slot_error="invalid value '0-3:0' for annotation 'shard.io/assignment': ..."))
    assert deposit(sidecar, "1")[0] == 200  # still routed by the map at epoch 1
    _, _, routes = get_json(sidecar.port, "/_shard/routes")
    assert routes["routes"][0]["problem"].endswith("keeping the map at epoch 1")
    assert metric(sidecar, 'shardmesh_sidecar_slot_map_refused_total{route="acct"}') == 1


def test_a_421_waits_for_the_newer_map_and_goes_to_the_new_owner(
        make_sidecar: Callable[..., SidecarThread], accounts: list[AccountsBackend]) -> None:
    sidecar = slot_sidecar(make_sidecar, accounts, "--timeout", "5s")
    account = account_in(2)
    assert deposit(sidecar, account)[2]["replica"] == "acct-0"
    # the old owner hands slot 2 to ordinal 1 (as `shardmesh reshard` asks it to) while
    # the sidecar still routes by epoch 1: it gets 421 + X-Shard-Epoch: 2
    reply = request(int(accounts[0].address.rsplit(":")[1]), "POST", "/_shard/handoff",
                    body=json.dumps({"slots": [2], "to": 1, "epoch": 2,
                                     "address": accounts[1].address}).encode())
    assert reply[0] == 200
    results: list[tuple[int, dict[str, str], Any]] = []
    big = b"x" * 300_000  # over 256 KiB: counted against the buffer budget while kept
    client = threading.Thread(target=lambda: results.append(deposit(sidecar, account, big)))
    began = time.monotonic()
    client.start()
    time.sleep(0.5)
    assert not results  # held, not answered with the 421
    feed(sidecar, smap(2, "0-1:0,2-7:1"), addresses_of(accounts))
    client.join(10)
    status, _, body = results[0]
    assert (status, body["replica"], body["count"]) == (200, "acct-1", 2)
    assert time.monotonic() - began >= 0.5
    assert accounts[0].ledger.refused == 1 and account not in accounts[0].ledger.counters
    assert metric(sidecar, 'shardmesh_sidecar_misdirected_total{ordinal="0",route="acct"}') == 1
    assert metric(sidecar, 'shardmesh_sidecar_slot_held_total{reason="epoch",route="acct"}') == 1


def test_a_421_without_a_newer_map_in_time_is_a_503(
        make_sidecar: Callable[..., SidecarThread], accounts: list[AccountsBackend]) -> None:
    sidecar = slot_sidecar(make_sidecar, accounts, "--timeout", "500ms",
                           "--max-json-body", "1024")
    account = account_in(3)
    assert request(int(accounts[0].address.rsplit(":")[1]), "POST", "/_shard/handoff",
                   body=json.dumps({"slots": [3], "to": 1, "epoch": 2,
                                    "address": accounts[1].address}).encode())[0] == 200
    status, head, body = deposit(sidecar, account)
    assert (status, body["error"]) == (503, "shard_unavailable") and "retry-after" in head
    assert "did not reach epoch 2 within 0.5s" in body["message"]
    # a body over the replay bound was streamed: nothing to replay
    status, _, body = deposit(sidecar, account, b"y" * 4096)
    assert (status, body["error"]) == (503, "shard_unavailable")
    assert "cannot be replayed" in body["message"] and "over 1024 bytes" in body["message"]
    # a 421 at an epoch the request was already sent with: nothing newer to wait for
    feed(sidecar, smap(2), addresses_of(accounts))  # a map that still names 0
    status, _, body = deposit(sidecar, account)
    assert (status, body["error"]) == (503, "shard_unavailable")
    assert "routed at epoch 2: no newer map" in body["message"]


def test_migrating_slots_are_held_or_refused(
        make_sidecar: Callable[..., SidecarThread], accounts: list[AccountsBackend]) -> None:
    waiting = slot_sidecar(make_sidecar, accounts, "--unavailable", "wait:3000")
    failing = slot_sidecar(make_sidecar, accounts)
    account = account_in(1)
    for sidecar in (waiting, failing):
        feed(sidecar, smap(2, migrating="0-1:0>1"), addresses_of(accounts))
    status, head, body = deposit(failing, account)
    assert (status, body["error"], head["retry-after"]) == (503, "shard_unavailable", "1")
    assert "is moving from ordinal 0 to 1" in body["message"]
    assert deposit(failing, account_in(2))[0] == 200  # other slots are not held
    results: list[tuple[int, dict[str, str], Any]] = []
    client = threading.Thread(target=lambda: results.append(deposit(waiting, account)))
    client.start()
    time.sleep(0.4)
    assert not results
    # the reshard's handoff, then its flip
    assert request(int(accounts[0].address.rsplit(":")[1]), "POST", "/_shard/handoff",
                   body=json.dumps({"slots": [0, 1], "to": 1, "epoch": 3,
                                    "address": accounts[1].address}).encode())[0] == 200
    feed(waiting, smap(3, "0-1:1,2-3:0,4-7:1"), addresses_of(accounts))
    client.join(10)
    assert results[0][0] == 200 and results[0][2]["replica"] == "acct-1"
    assert metric(waiting, 'shardmesh_sidecar_slot_held_total{reason="migrating",route="acct"}') \
        == 1
    assert accounts[0].ledger.refused == 0  # held, never sent to the old owner


def test_an_owner_outside_the_replicas_is_unavailable(
        make_sidecar: Callable[..., SidecarThread], accounts: list[AccountsBackend]) -> None:
    sidecar = slot_sidecar(make_sidecar, accounts)
    feed(sidecar, smap(2, "0-3:0,4-5:1,6-7:4"), addresses_of(accounts))
    status, head, body = deposit(sidecar, account_in(6))
    assert (status, body["error"], body["ordinal"]) == (503, "shard_unavailable", 4)
    assert "ordinal 4, which is not one of the statefulset's ordinals 0..1" in body["message"]
    _, _, info = get_json(sidecar.port, f"/_shard/resolve?route=acct&key={account_in(6)}")
    assert (info["slot"], info["ordinal"], info["ready"]) == (6, 4, False)
    assert "not one of" in info["problem"]


def test_assignment_helpers_match_the_fed_maps() -> None:
    assert parse_assignment(FIRST, S) == Assignment.of([0, 0, 0, 0, 1, 1, 1, 1])
    assert smap(3, migrating="0-1:0>1").in_flight[1] == Migration(0, 1, 0, 1)


def test_static_mode_takes_a_slot_map(make_sidecar: Callable[..., SidecarThread]) -> None:
    echo = [Backend(ordinal=o).start() for o in (0, 1)]
    try:
        sidecar = make_sidecar("--route", "acct=" + ",".join(b.address for b in echo),
                               "--key", "path:1", "--slot-map", f"8:{FIRST}", "--slot-epoch", "3")
        status, _, body = get_json(sidecar.port, f"/acct/accounts/{account_in(5)}")
        assert (status, body["ordinal"], body["headers"]["x-shard-epoch"]) == (200, 1, "3")
    finally:
        for backend in echo:
            backend.stop()
    from sidecar.settings import SettingsError
    from tests.sidecar.harness import settings_from_args
    with pytest.raises(SettingsError) as caught:
        settings_from_args(["--route", "a=h:1", "--slot-map", "8:0-3:0"])
    assert "invalid value '8:0-3:0' for --slot-map" in str(caught.value)
    assert "4 of 8 slots have no owner" in str(caught.value)
