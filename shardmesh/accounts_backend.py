"""A small stateful backend: per-account counters that refuse keys they do not own.

It plays one replica (``sharded-svc-<ordinal>``) of a sharded StatefulSet in
``shardmesh demo`` and in the end-to-end tests. It is deliberately strict:
a request whose account the documented key -> ordinal function does not give
to this replica is answered 409 and changes nothing. So a misrouted request is
never silently absorbed; it shows up as a 409 that a test can count.

Its ordinal is its pod's own (the ``apps.kubernetes.io/pod-index`` label), and
it owns the accounts whose key-function result i gives ``start + i`` = that
ordinal, where ``start`` is the StatefulSet's ``spec.ordinals.start``.

In slot mode (SPEC §6, when a request carries ``X-Shard-Slot``) it owns the
slots its table (shardmesh/slot_table.py) says: a slot it does not own is
refused with ``421 Misdirected Request`` and its latest ``X-Shard-Epoch``; a
key whose slot is not ``X-Shard-Slot`` is still a 409. ``--slots S
--assignment TEXT`` seed the table (then it knows which slots it never owned);
without them it learns its slots from the requests the sidecar sends it.

HTTP interface (paths as the backend sees them, after the sidecar strips the route):
- ``POST /accounts/<id>/deposit``: add 1 to the account's counter, answer its state.
- ``GET /accounts/<id>``: the account's state (404 if this replica never saw it).
- ``GET /_state``: every account this replica holds, with counts of 409s (and 421s),
  and its slot table.
- ``POST /_shard/handoff {"slots": [...], "to": O, "epoch": E, "from": O0?, "address": A?}``
  (from ``shardmesh reshard``): refuse those slots from now on, send their accounts
  to the new owner (``POST http://<peer>/_shard/accept``), answer 200 when it has
  them. The peer is ``--peer-template`` with ``{ordinal}`` filled in (e.g.
  ``sharded-svc-{ordinal}.sharded-svc:8080``, the headless Service's pod DNS
  name), else the request's ``address`` (the new owner's pod IP and port, which
  ``shardmesh reshard`` adds). 200 again for a repeat to the same target; 409
  for slots it never owned or gave to another ordinal.
- ``POST /_shard/accept {"slots": [...], "epoch": E, "accounts": {id: count}}``:
  take slots and their accounts from the old owner.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shardmesh.slot_table import HandoffBusy, HandoffRefused, SlotTable, restored
from sidecar import slots as slotmap
from sidecar.shardfn import Strategy, ordinal_for, pod_ordinal

Answer = tuple[int, dict[str, Any]]


@dataclass
class Ledger:
    """The replica's state, guarded by a lock (the server is threaded)."""

    #: This pod's own ordinal (its pod-index), the value X-Shard-Ordinal must carry.
    ordinal: int
    strategy: Strategy
    name: str
    #: The StatefulSet's spec.ordinals.start.
    start: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    misrouted: int = 0
    #: Open client sockets, so that stopping the replica really drops keep-alive peers.
    connections: set[socket.socket] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Slot mode: S (from --slots or the first X-Shard-Slots), and this replica's slots.
    slots: int | None = None
    table: SlotTable | None = None
    refused: int = 0
    #: How to reach ordinal O's backend, e.g. "sharded-svc-{ordinal}.sharded-svc:8080".
    peer_template: str = ""
    #: ``--state-file``: every change is written here before it is answered, and a
    #: restart reads it back (durable across a crash of the process; no fsync, so not
    #: across one of the machine).
    state_file: str = ""

    def __post_init__(self) -> None:
        if self.table is None:
            self.table = SlotTable(self.ordinal)
        #: Signalled when a handoff ends, for a repeat that waits for it.
        self.handoff_done = threading.Condition(self.lock)

    def save(self) -> None:
        """Write the state file (the caller holds the lock): a new file, then a rename."""
        if not self.state_file:
            return
        assert self.table is not None
        state = {"accounts": self.counters, "misrouted": self.misrouted,
                 "refused": self.refused, "slots": self.slots, "table": self.table.describe()}
        temporary = f"{self.state_file}.new"
        with open(temporary, "w") as out:
            json.dump(state, out)
        os.replace(temporary, self.state_file)

    def load(self) -> bool:
        """Take the state file's state, if there is one (at start, before serving)."""
        try:
            with open(self.state_file) as saved:
                state = json.load(saved)
        except FileNotFoundError:
            return False
        self.counters = dict(state["accounts"])
        self.misrouted, self.refused, self.slots = (state["misrouted"], state["refused"],
                                                    state["slots"])
        self.table = restored(self.ordinal, state["table"])
        return True

    def seed(self, slots: int, assignment: str) -> None:
        """Know S and which slots this replica owns (from shard.io/assignment)."""
        parsed = slotmap.parse_assignment(assignment, slots)
        self.slots = slots
        self.table = SlotTable(self.ordinal, strict=True, owned=set(parsed.slots_of(self.ordinal)))

    def slot_error(self, account: str, headers: Any) -> Answer | None:
        """Slot mode's checks, under the lock: 409 for a key of another slot, 421 for a
        slot this replica does not own; None when the request is ours."""
        table = self.table
        assert table is not None
        fields = [headers.get(h) for h in ("X-Shard-Slot", "X-Shard-Slots", "X-Shard-Epoch",
                                           "X-Shard-Ordinal")]
        if not all(f is not None and f.isascii() and f.isdigit() for f in fields):
            return 400, {"error": "bad_slot_headers",
                         "message": f"X-Shard-Slot/-Slots/-Epoch/-Ordinal must be integers, "
                                    f"got {fields}"}
        slot, count, epoch, ordinal = (int(f) for f in fields if f is not None)
        if self.slots is None:
            self.slots = count
        if count != self.slots or not 0 <= slot < count:
            return 409, {"error": "not_my_shard",
                         "message": f"slot {slot} of {count}: this replica has {self.slots}"}
        if ordinal_for(account, self.strategy, count) != slot:
            return 409, {"error": "not_my_shard",
                         "message": f"account {account} is in slot "
                                    f"{ordinal_for(account, self.strategy, count)}, not {slot}"}
        why = table.admit(slot, ordinal, epoch)
        if why is not None:
            self.refused += 1
            return 421, {"error": "misdirected", "message": why, "epoch": table.epoch}
        return None

    def accounts_in(self, slots: list[int]) -> dict[str, int]:
        assert self.slots is not None
        wanted = set(slots)
        return {a: n for a, n in self.counters.items()
                if ordinal_for(a, self.strategy, self.slots) in wanted}

    def ownership_error(self, account: str, ordinal: str | None, count: str | None) -> str | None:
        """Why this request is not ours, or None. Pure apart from reading ``self``."""
        if ordinal != str(self.ordinal):
            return f"X-Shard-Ordinal is {ordinal!r}, this is ordinal {self.ordinal}"
        if count is None or not count.isdigit() or int(count) < 1:
            return f"X-Shard-Count is {count!r}, expected a positive integer"
        owner = pod_ordinal(account, self.strategy, int(count), self.start)
        if owner != self.ordinal:
            starting = f" (ordinals start at {self.start})" if self.start else ""
            return (f"account {account} belongs to ordinal {owner} of {count}{starting}, "
                    f"not {self.ordinal}")
        return None


def _handler(ledger: Ledger) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as two writes; with Nagle on, each response would
        # wait ~40 ms for the peer's delayed ACK.
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            with ledger.lock:
                ledger.connections.add(self.connection)

        def finish(self) -> None:
            with ledger.lock:
                ledger.connections.discard(self.connection)
            super().finish()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # the demo prints its own table; per-request logs would drown it

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            if status == 421 and ledger.table is not None:
                self.send_header("X-Shard-Epoch", str(ledger.table.epoch))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Replica", ledger.name)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            parts = self.path.split("?")[0].strip("/").split("/")
            if parts == ["_state"]:
                with ledger.lock:
                    assert ledger.table is not None
                    state = {"replica": ledger.name, "ordinal": ledger.ordinal,
                             "accounts": dict(ledger.counters), "misrouted": ledger.misrouted,
                             "refused": ledger.refused, "slots": ledger.slots,
                             "table": ledger.table.describe()}
                self._send(200, state)
            elif len(parts) == 2 and parts[0] == "accounts":
                self._account(parts[1], deposit=False)
            else:
                self._send(404, {"error": "not_found", "path": self.path})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "deposit":
                self._account(parts[1], deposit=True)
            elif parts[:1] == ["_shard"] and parts[1:] in (["handoff"], ["accept"]):
                try:
                    body = json.loads(raw)
                    answer = (handoff if parts[1] == "handoff" else accept)(ledger, body)
                except (ValueError, TypeError, KeyError) as err:
                    answer = 400, {"error": "bad_request", "message": f"{parts[1]}: {err!r}"}
                self._send(*answer)
            else:
                self._send(404, {"error": "not_found", "path": self.path})

        def _account(self, account: str, deposit: bool) -> None:
            if self.headers.get("X-Shard-Slot") is not None:
                with ledger.lock:
                    refusal = ledger.slot_error(account, self.headers)
                    if refusal is None:
                        if deposit:
                            ledger.counters[account] = ledger.counters.get(account, 0) + 1
                        count = ledger.counters.get(account)
                    if deposit or refusal is not None:
                        ledger.save()
                if refusal is not None:
                    self._send(refusal[0], {**refusal[1], "replica": ledger.name})
                elif count is None:
                    self._send(404, {"error": "unknown_account", "account": account})
                else:
                    self._send(200, {"account": account, "count": count, "replica": ledger.name,
                                     "ordinal": ledger.ordinal})
                return
            why = ledger.ownership_error(
                account, self.headers.get("X-Shard-Ordinal"), self.headers.get("X-Shard-Count")
            )
            with ledger.lock:
                if why is not None:
                    ledger.misrouted += 1
                elif deposit:
                    ledger.counters[account] = ledger.counters.get(account, 0) + 1
                count = ledger.counters.get(account)
                if deposit or why is not None:
                    ledger.save()
            if why is not None:
                self._send(409, {"error": "not_my_shard", "message": why, "replica": ledger.name})
            elif count is None:
                self._send(404, {"error": "unknown_account", "account": account})
            else:
                self._send(200, {"account": account, "count": count, "replica": ledger.name,
                                 "ordinal": ledger.ordinal})

    return Handler


def _int_list(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not all(type(v) is int and v >= 0 for v in value):
        raise ValueError(f"{what} must be a list of non-negative integers, got {value!r}")
    return list(value)


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def handoff(ledger: Ledger, body: dict[str, Any]) -> Answer:
    """Send the slots' accounts to the new owner, then let go of them (see the module doc)."""
    slots = tuple(_int_list(body["slots"], "slots"))
    to, epoch = _int(body["to"], "to"), _int(body["epoch"], "epoch")
    source = _int(body["from"], "from") if "from" in body else None
    table = ledger.table
    assert table is not None
    with ledger.lock:
        if ledger.slots is None and "slots_total" in body:
            ledger.slots = _int(body["slots_total"], "slots_total")
        while True:
            try:
                send = table.begin_handoff(slots, to, epoch, source)
                break
            except HandoffRefused as refused:
                ledger.save()
                return 409, {"error": "not_owned", "message": str(refused),
                             "replica": ledger.name}
            except HandoffBusy:  # a repeat (a resumed reshard): answer when the first ends
                ledger.handoff_done.wait(5)
        accounts = ledger.accounts_in(send) if send and ledger.slots else {}
        ledger.save()
    if not send:
        return 200, {"moved": 0, "repeat": True, "epoch": epoch, "replica": ledger.name}
    peer = ledger.peer_template.format(ordinal=to) if ledger.peer_template else body.get("address")
    if not isinstance(peer, str) or not peer:
        with ledger.lock:
            table.abort_handoff(send)
            ledger.save()
            ledger.handoff_done.notify_all()
        return 400, {"error": "no_peer", "message": "no --peer-template and no address in the "
                     "handoff: cannot reach the new owner"}
    status, reply = _post(peer, "/_shard/accept", {"slots": send, "epoch": epoch,
                                                   "from": ledger.ordinal, "accounts": accounts})
    with ledger.lock:
        ledger.handoff_done.notify_all()
        if status != 200:
            table.abort_handoff(send)
            ledger.save()
            return 502, {"error": "peer_failed", "message": f"accept at {peer}: {status} {reply}"}
        table.end_handoff(send)
        for account in accounts:
            ledger.counters.pop(account, None)
        ledger.save()
    return 200, {"moved": len(accounts), "slots": send, "to": to, "epoch": epoch,
                 "replica": ledger.name}


def accept(ledger: Ledger, body: dict[str, Any]) -> Answer:
    slots = _int_list(body["slots"], "slots")
    epoch = _int(body["epoch"], "epoch")
    accounts = body["accounts"]
    if not isinstance(accounts, dict) or not all(
            isinstance(k, str) and type(v) is int for k, v in accounts.items()):
        raise ValueError(f"accounts must map ids to counts, got {accounts!r:.100}")
    table = ledger.table
    assert table is not None
    with ledger.lock:
        table.accept(slots, epoch)
        ledger.counters.update(accounts)
        ledger.save()
    return 200, {"accepted": len(accounts), "slots": slots, "replica": ledger.name}


def _post(address: str, path: str, body: dict[str, Any]) -> tuple[int, str]:
    host, _, port = address.rpartition(":")
    try:
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=30)
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
        conn.close()
    except (OSError, ValueError, http.client.HTTPException) as err:
        return 0, str(err)
    return response.status, text


class AccountsBackend:
    """One replica, served on ``host:port`` in a background thread."""

    def __init__(self, host: str, port: int, ordinal: int, strategy: Strategy = "modulo",
                 name: str | None = None, start: int = 0, peer_template: str = "",
                 state_file: str = "") -> None:
        self.ledger = Ledger(ordinal, strategy, name or f"sharded-svc-{ordinal}", start=start,
                             peer_template=peer_template, state_file=state_file)
        self.server = ThreadingHTTPServer((host, port), _handler(self.ledger))
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> AccountsBackend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.ledger.lock:
            open_connections = list(self.ledger.connections)
        for conn in open_connections:  # a dead replica must not keep answering on old sockets
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

