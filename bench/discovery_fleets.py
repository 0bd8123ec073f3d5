"""Many light discovery clients in one process, for ``bench/discovery.py``
(which runs each fleet in a child process: ``bench/fleet_process.py``).

- ``DirectFleet``: N direct-mode sidecars' discovery, each the sidecar's own
  ``sidecar.discovery.RouteWatch`` (the narrow list+watch of the StatefulSet by
  name and of its pods by selector, with its backoff and relist spread) with
  its own API client, logged in with a service-account token as a sidecar is.
  RouteWatch runs in threads (two per watcher), so N of them share the process.
- ``DirectoryFleet``: N subscriptions to ``shardmesh directory`` over the
  sidecar's protocol (``directory.client.stream``), on one uvloop event loop in
  a thread of its own.

Both record, per client, the replica count of the last map it received and
when it first saw the replica count named by ``expect`` (the scale event).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from functools import partial
from pathlib import Path

from directory.client import DirectoryError, Endpoint, stream
from sidecar.annotations import parse_routes
from sidecar.discovery import RouteWatch, Snapshot, api_client
from sidecar.metrics import Stats
from sidecar.settings import Settings

#: Clients started per second: pods start over time, not all in one instant.
START_RATE = 200


class Tally:
    """What each of N clients last saw and when it first saw the expected replica count."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.replicas: list[int] = [-1] * n
        self.seen: list[float | None] = [None] * n
        self.target: int | None = None
        self.began: float | None = None  # when the first client was started
        self.last_note = 0.0  # when any client last received a map

    def last_news(self) -> float:
        return self.last_note

    def restarts(self) -> dict[str, int]:
        """Watch restarts by reason (direct mode only)."""
        return {}

    def cpu_s(self) -> float | None:
        """CPU seconds the clients' process has used (when it is a process of their own)."""
        return None

    def start_time(self) -> float | None:
        return self.began

    def note(self, i: int, replicas: int) -> None:
        self.replicas[i] = replicas
        self.last_note = time.monotonic()
        if replicas == self.target and self.seen[i] is None:
            self.seen[i] = time.monotonic()

    def expect(self, replicas: int) -> None:
        """From now on, time each client's first map with ``replicas`` replicas."""
        self.seen = [None] * self.n
        self.target = replicas

    def synced(self) -> int:
        """Clients that have received a map."""
        return sum(r >= 0 for r in self.replicas)

    def arrivals(self) -> list[float]:
        return [t for t in self.seen if t is not None]

    def stop(self) -> None:
        """Stop every client."""

    def before_rollout(self) -> None:
        """Called once all have a map and the API server's watches are counted."""

    def before_restart(self) -> None:
        """Called before the API server is restarted."""


class WithReference(Tally):
    """A fleet, and a one-watch DirectFleet beside it for the rollout only (started after
    the API server's watches are counted, stopped before its restart), timed on its own."""

    def __init__(self, fleet: Tally, reference: DirectFleet) -> None:
        super().__init__(fleet.n)
        self.fleet, self.reference = fleet, reference

    def before_rollout(self) -> None:
        self.reference.start()
        deadline = time.monotonic() + 60
        while not self.reference.synced() and time.monotonic() < deadline:
            time.sleep(0.1)

    def before_restart(self) -> None:
        self.reference.stop()

    def expect(self, replicas: int) -> None:
        self.fleet.expect(replicas)
        self.reference.expect(replicas)

    def synced(self) -> int:
        return self.fleet.synced()

    def start_time(self) -> float | None:
        return self.fleet.start_time()

    def last_news(self) -> float:
        return self.fleet.last_news()

    def cpu_s(self) -> float | None:
        return self.fleet.cpu_s()

    def arrivals(self) -> list[float]:
        return self.fleet.arrivals() if self.reference.arrivals() else []


class DirectFleet(Tally):
    """One watcher per kubeconfig (each a token of its own, as each pod has)."""

    def __init__(self, kubeconfigs: list[Path], namespace: str, statefulset: str) -> None:
        super().__init__(len(kubeconfigs))
        spec = parse_routes({"shard.io/backend": f"{statefulset}:8080"}, namespace)[0]
        self.stats = [Stats() for _ in kubeconfigs]
        self.watches = [RouteWatch(spec, api_client(Settings(kubeconfig=str(path))),
                                   partial(self._publish, i), stats)
                        for i, (path, stats) in enumerate(zip(kubeconfigs, self.stats,
                                                              strict=True))]

    def restarts(self) -> dict[str, int]:
        """Watch restarts of all N by reason (``expired``, ``connection``, ``http_403``...)."""
        total: dict[str, int] = {}
        for stats in self.stats:
            for reason, count in stats.watch_restarts.items():
                total[reason] = total.get(reason, 0) + count
        return total

    def _publish(self, i: int, shot: Snapshot) -> None:
        self.note(i, shot.count)

    def start(self) -> None:
        self.began = time.monotonic()
        for i, watch in enumerate(self.watches):
            watch.start()
            if i % 20 == 19:
                time.sleep(20 / START_RATE)

    def stop(self) -> None:
        for watch in self.watches:
            watch.stop()


class DirectoryFleet(Tally):
    """One subscriber per endpoint (each a token of its own, as each pod has)."""

    def __init__(self, endpoints: list[Endpoint], namespace: str, statefulset: str) -> None:
        super().__init__(len(endpoints))
        self.endpoints, self.namespace, self.statefulset = endpoints, namespace, statefulset
        import uvloop

        self.loop = uvloop.new_event_loop()
        self.tasks: list[asyncio.Task[None]] = []
        self.thread = threading.Thread(target=self._run, daemon=True, name="directory-fleet")

    def start(self) -> None:
        self.began = time.monotonic()
        self.thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(lambda: [t.cancel() for t in self.tasks])
        self.thread.join(30)

    def _run(self) -> None:
        async def main() -> None:
            for i in range(self.n):
                self.tasks.append(asyncio.create_task(self._one(i)))
                if i % 20 == 19:
                    await asyncio.sleep(20 / START_RATE)
            await asyncio.gather(*self.tasks, return_exceptions=True)

        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(main())

    async def _one(self, i: int) -> None:
        while True:  # a refused or dropped connection (a burst on the backlog): again
            try:
                async with contextlib.aclosing(stream(self.endpoints[i], self.namespace,
                                                      self.statefulset)) as messages:
                    async for m in messages:
                        if m["type"] == "snapshot":
                            self.note(i, m["map"]["replicas"])
            except (OSError, TimeoutError, DirectoryError, asyncio.IncompleteReadError):
                pass
            await asyncio.sleep(0.2)
