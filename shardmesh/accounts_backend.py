"""A small stateful backend: per-account counters that refuse keys they do not own.

It plays one replica (``sharded-svc-<ordinal>``) of a sharded StatefulSet in
``shardmesh demo`` and in the end-to-end tests. It is deliberately strict:
a request whose account the documented key -> ordinal function does not give
to this replica is answered 409 and changes nothing. So a misrouted request is
never silently absorbed; it shows up as a 409 that a test can count.

Its ordinal is its pod's own (the ``apps.kubernetes.io/pod-index`` label), and
it owns the accounts whose key-function result i gives ``start + i`` = that
ordinal, where ``start`` is the StatefulSet's ``spec.ordinals.start``.

HTTP interface (paths as the backend sees them, after the sidecar strips the route):
- ``POST /accounts/<id>/deposit``: add 1 to the account's counter, answer its state.
- ``GET /accounts/<id>``: the account's state (404 if this replica never saw it).
- ``GET /_state``: every account this replica holds, with counts of 409s.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sidecar.shardfn import Strategy, pod_ordinal


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
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Replica", ledger.name)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            parts = self.path.split("?")[0].strip("/").split("/")
            if parts == ["_state"]:
                with ledger.lock:
                    state = {"replica": ledger.name, "ordinal": ledger.ordinal,
                             "accounts": dict(ledger.counters), "misrouted": ledger.misrouted}
                self._send(200, state)
            elif len(parts) == 2 and parts[0] == "accounts":
                self._account(parts[1], deposit=False)
            else:
                self._send(404, {"error": "not_found", "path": self.path})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "deposit":
                self._account(parts[1], deposit=True)
            else:
                self._send(404, {"error": "not_found", "path": self.path})

        def _account(self, account: str, deposit: bool) -> None:
            why = ledger.ownership_error(
                account, self.headers.get("X-Shard-Ordinal"), self.headers.get("X-Shard-Count")
            )
            with ledger.lock:
                if why is not None:
                    ledger.misrouted += 1
                elif deposit:
                    ledger.counters[account] = ledger.counters.get(account, 0) + 1
                count = ledger.counters.get(account)
            if why is not None:
                self._send(409, {"error": "not_my_shard", "message": why, "replica": ledger.name})
            elif count is None:
                self._send(404, {"error": "unknown_account", "account": account})
            else:
                self._send(200, {"account": account, "count": count, "replica": ledger.name,
                                 "ordinal": ledger.ordinal})

    return Handler


class AccountsBackend:
    """One replica, served on ``host:port`` in a background thread."""

    def __init__(self, host: str, port: int, ordinal: int, strategy: Strategy = "modulo",
                 name: str | None = None, start: int = 0) -> None:
        self.ledger = Ledger(ordinal, strategy, name or f"sharded-svc-{ordinal}", start=start)
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
