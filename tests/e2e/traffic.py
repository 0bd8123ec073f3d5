"""Client traffic through the sidecar, the way an app in the pod would send it.

Each worker thread keeps one HTTP/1.1 keep-alive connection to the sidecar's
data port. Every request's outcome is recorded, never retried: a retry would
hide exactly the answers (409, 502, 503) the end-to-end checks look for.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Answer:
    """What the app saw for one deposit. ``status`` 0 means the sidecar connection failed."""

    account: str
    status: int
    shard_ordinal: str | None
    retry_after: str | None
    body: Any


class Client:
    """One keep-alive connection to the sidecar (reopened if the sidecar closes it)."""

    def __init__(self, port: int, route: str) -> None:
        self.port, self.route = port, route
        self._conn: http.client.HTTPConnection | None = None

    def deposit(self, account: str) -> Answer:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(HOST, self.port, timeout=15)
        try:
            self._conn.request("POST", f"/{self.route}/accounts/{account}/deposit", body=b"")
            response = self._conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Answer(account, 0, None, None, f"{type(exc).__name__}: {exc}")
        if response.will_close:
            self.close()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        return Answer(account, response.status, response.getheader("X-Shard-Ordinal"),
                      response.getheader("Retry-After"), body)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


#: Concurrent connections. Each AccountsBackend answer costs ~40 ms of latency (its
#: headers and body leave in two writes with Nagle on: see the e2e report), so
#: throughput comes from concurrency, as it would for an app with many requests.
THREADS = 16


def deposit_all(port: int, route: str, deposits: Sequence[str], threads: int = THREADS
                ) -> list[Answer]:
    """Send one deposit per entry of ``deposits`` (an account may repeat), spread over threads."""
    chunks = [list(deposits[i::threads]) for i in range(threads)]
    results: list[list[Answer]] = [[] for _ in chunks]

    def work(index: int) -> None:
        client = Client(port, route)
        try:
            results[index] = [client.deposit(account) for account in chunks[index]]
        finally:
            client.close()

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [answer for chunk in results for answer in chunk]


class Pump:
    """Deposits in a loop over ``accounts`` from a few threads until :meth:`stop`."""

    def __init__(self, port: int, route: str, accounts: Sequence[str], threads: int = 4) -> None:
        self.port, self.route, self.accounts = port, route, list(accounts)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.answers: list[Answer] = []
        self._threads = [threading.Thread(target=self._run, args=(i, threads), daemon=True)
                         for i in range(threads)]

    def start(self) -> Pump:
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, index: int, stride: int) -> None:
        client = Client(self.port, self.route)
        position = index
        try:
            while not self._stop.is_set():
                answer = client.deposit(self.accounts[position % len(self.accounts)])
                position += stride
                with self._lock:
                    self.answers.append(answer)
        finally:
            client.close()

    def sent(self) -> int:
        with self._lock:
            return len(self.answers)

    def stop(self) -> list[Answer]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        with self._lock:
            return list(self.answers)
