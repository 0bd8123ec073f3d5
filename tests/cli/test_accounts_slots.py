"""The accounts backend's side of slot mode: 421 + epoch, handoff, accept, 409, default mode."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardmesh.accounts_backend import AccountsBackend
from shardmesh.slot_table import HandoffBusy, SlotTable, restored
from sidecar.shardfn import ordinal_for
from sidecar.slots import initial

S = 16


def call(backend: AccountsBackend, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    host, port = backend.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, json.dumps(body) if body is not None else b"", headers or {})
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def slot_headers(account: str, ordinal: int, epoch: int) -> dict[str, str]:
    return {"X-Shard-Slot": str(ordinal_for(account, "modulo", S)), "X-Shard-Slots": str(S),
            "X-Shard-Epoch": str(epoch), "X-Shard-Ordinal": str(ordinal)}


@pytest.fixture
def pair() -> Iterator[tuple[AccountsBackend, AccountsBackend]]:
    a = AccountsBackend("127.0.0.1", 0, 0).start()
    b = AccountsBackend("127.0.0.1", 0, 1).start()
    text = str(initial(S, 0, 1))  # all 16 slots on ordinal 0
    a.ledger.seed(S, text)
    b.ledger.seed(S, text)
    yield a, b
    a.stop()
    b.stop()


def test_handoff_moves_accounts_and_fences(pair: tuple[AccountsBackend, AccountsBackend]) -> None:
    a, b = pair
    accounts = [str(n) for n in range(40)]
    for account in accounts:
        status, _, _ = call(a, "POST", f"/accounts/{account}/deposit", None,
                            slot_headers(account, 0, 1))
        assert status == 200
    # ordinal 1 owns nothing yet: 421 with its epoch
    status, headers, body = call(b, "POST", "/accounts/3/deposit", None, slot_headers("3", 1, 1))
    assert status == 421 and headers["x-shard-epoch"] == "1" and body["error"] == "misdirected"
    moving = [0, 1, 2, 3]
    handoff = {"slots": moving, "to": 1, "epoch": 3, "from": 0, "address": b.address}
    status, _, body = call(a, "POST", "/_shard/handoff", handoff)
    assert status == 200 and body["moved"] == 12  # accounts 0-3, 16-19, 32-35
    on_b = {k for k in b.ledger.counters}
    assert on_b == {x for x in accounts if int(x) % S in moving}
    assert not on_b & set(a.ledger.counters)
    # the old owner refuses the moved slots with its newest epoch
    status, headers, _ = call(a, "POST", "/accounts/3/deposit", None, slot_headers("3", 0, 2))
    assert status == 421 and headers["x-shard-epoch"] == "3"
    # the new owner serves them, and the count moved with the account
    status, _, body = call(b, "POST", "/accounts/3/deposit", None, slot_headers("3", 1, 3))
    assert status == 200 and body["count"] == 2
    # repeated handoff to the same target: 200, nothing resent (the deposit above survives)
    status, _, body = call(a, "POST", "/_shard/handoff", handoff)
    assert status == 200 and body["repeat"] is True and b.ledger.counters["3"] == 2
    # a slot given to 1 cannot go to 2; slots ordinal 1 never owned are a 409
    status, _, body = call(a, "POST", "/_shard/handoff", {**handoff, "to": 2})
    assert status == 409 and "already handed to ordinal 1" in body["message"]
    status, _, body = call(b, "POST", "/_shard/handoff", {"slots": [9], "to": 0, "epoch": 4,
                                                          "address": a.address})
    assert status == 409 and "never owned" in body["message"]
    status, _, body = call(a, "POST", "/_shard/handoff", {"slots": [9], "to": 1, "epoch": 4,
                                                          "from": 1, "address": b.address})
    assert status == 409 and "this is ordinal 0, not 1" in body["message"]


def test_failed_transfer_keeps_the_slots(pair: tuple[AccountsBackend, AccountsBackend]) -> None:
    a, _ = pair
    call(a, "POST", "/accounts/5/deposit", None, slot_headers("5", 0, 1))
    status, _, _ = call(a, "POST", "/_shard/handoff",
                        {"slots": [5], "to": 1, "epoch": 3, "address": "127.0.0.1:1"})
    assert status == 502
    status, _, body = call(a, "POST", "/accounts/5/deposit", None, slot_headers("5", 0, 1))
    assert status == 200 and body["count"] == 2


def test_bad_requests_are_400_and_misrouted_keys_409(
        pair: tuple[AccountsBackend, AccountsBackend]) -> None:
    a, _ = pair
    assert call(a, "POST", "/_shard/handoff", {"slots": "x", "to": 1, "epoch": 1})[0] == 400
    assert call(a, "POST", "/_shard/handoff", {"to": 1})[0] == 400
    wrong = {**slot_headers("5", 0, 1), "X-Shard-Slot": "6"}
    status, _, body = call(a, "POST", "/accounts/5/deposit", None, wrong)
    assert status == 409 and "is in slot 5, not 6" in body["message"]
    status, _, _ = call(a, "POST", "/accounts/5/deposit", None, {**wrong, "X-Shard-Epoch": "x"})
    assert status == 400


def test_unseeded_backend_learns_its_slots_and_default_mode_is_unchanged() -> None:
    a = AccountsBackend("127.0.0.1", 0, 2).start()
    try:
        assert call(a, "POST", "/accounts/7/deposit", None, slot_headers("7", 2, 5))[0] == 200
        assert call(a, "POST", "/accounts/7/deposit", None, slot_headers("7", 1, 5))[0] == 421
        # default mode: X-Shard-Count, 409 for another ordinal's key
        assert call(a, "POST", "/accounts/2/deposit", None,
                    {"X-Shard-Ordinal": "2", "X-Shard-Count": "3"})[0] == 200
        assert call(a, "POST", "/accounts/1/deposit", None,
                    {"X-Shard-Ordinal": "2", "X-Shard-Count": "3"})[0] == 409
    finally:
        a.stop()


def test_a_repeat_during_a_handoff_waits_for_it_and_a_restored_one_resends() -> None:
    table = SlotTable(0, strict=True, owned={0, 1, 2})
    assert table.begin_handoff((0, 1), 1, 3, 0) == [0, 1]
    # the first is still sending: a 200 now would let the reshard flip before the data lands
    with pytest.raises(HandoffBusy):
        table.begin_handoff((0, 1), 1, 3, 0)
    assert table.admit(0, 0, 2) is not None  # refused while leaving
    # the process dies here; its saved table comes back with 0 and 1 still leaving
    back = restored(0, json.loads(json.dumps(table.describe())))
    assert back.admit(1, 0, 2) is not None and back.leaving == table.leaving
    assert back.begin_handoff((0, 1), 1, 3, 0) == [0, 1]  # sent again, not "done"
    back.end_handoff([0, 1])
    assert back.begin_handoff((0, 1), 1, 3, 0) == []  # now a plain repeat
    table.end_handoff([0, 1])
    assert table.begin_handoff((0, 1), 1, 3, 0) == []


def test_state_file_survives_a_restart(tmp_path: Path) -> None:
    state = str(tmp_path / "state.json")
    a = AccountsBackend("127.0.0.1", 0, 0, state_file=state)
    a.ledger.seed(S, str(initial(S, 0, 2)))
    a.start()
    b = AccountsBackend("127.0.0.1", 0, 1).start()
    b.ledger.seed(S, str(initial(S, 0, 2)))
    try:
        accounts = [str(n) for n in range(8)]  # slots 0-7: ordinal 0's
        for account in accounts * 2:
            assert call(a, "POST", f"/accounts/{account}/deposit", None,
                        slot_headers(account, 0, 1))[0] == 200
        status, _, _ = call(a, "POST", "/_shard/handoff", {
            "slots": [0, 1], "to": 1, "epoch": 3, "from": 0, "address": b.address})
        assert status == 200
        status, _, _ = call(a, "POST", "/accounts/0/deposit", None, slot_headers("0", 0, 1))
        assert status == 421
    finally:
        a.stop()
    again = AccountsBackend("127.0.0.1", 0, 0, state_file=state)
    assert again.ledger.load()
    again.start()
    try:
        _, _, body = call(again, "GET", "/_state")
        assert body["accounts"] == {a: 2 for a in accounts[2:]}
        assert body["refused"] == 1 and body["table"]["gone"] == {"0": [1, 3], "1": [1, 3]}
        assert call(again, "POST", "/accounts/1/deposit", None, slot_headers("1", 0, 1))[0] == 421
        assert call(again, "POST", "/accounts/2/deposit", None,
                    slot_headers("2", 0, 1))[2]["count"] == 3
    finally:
        again.stop()
        b.stop()
