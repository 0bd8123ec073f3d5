"""Informers by StatefulSet, their subscribers, and the fan-out. Runs on the event loop.

- ``acquire`` starts a StatefulSet's informer for its first user (a stream or a
  resolve); ``release`` stops it ``linger_s`` after its last one left, so a
  sidecar that reconnects finds it still running (and its generation current).
- A change is serialised once (``Entry.line``) and offered to every subscriber;
  a subscriber holds only the newest line not yet written, so a slow reader
  skips intermediate maps instead of growing a queue: each snapshot is whole.
- Generations come from one counter for the process, so they only grow, even
  across an informer's restart; ``source`` names this process, and a client
  whose (source, generation) is current is sent nothing until the next change.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from directory import metrics
from directory.informer import Informer
from directory.maps import DirMap, MapKey, to_wire

log = logging.getLogger("shardmesh.directory.hub")

InformerFactory = Callable[[MapKey, Callable[[DirMap, float], None]], Informer]


class Subscriber:
    """One stream's mailbox: the newest snapshot line not written yet."""

    def __init__(self) -> None:
        self.pending: bytes | None = None
        self.arrived = 0.0
        self.wake = asyncio.Event()

    def offer(self, line: bytes, arrived: float) -> None:
        self.pending, self.arrived = line, arrived
        self.wake.set()

    def take(self) -> tuple[bytes, float] | None:
        line, self.pending = self.pending, None
        self.wake.clear()
        return None if line is None else (line, self.arrived)


@dataclass
class Entry:
    key: MapKey
    informer: Informer
    map: DirMap | None = None
    generation: int = 0
    line: bytes = b""
    arrived: float = 0.0
    users: int = 0
    subscribers: set[Subscriber] = field(default_factory=set)
    stopper: asyncio.TimerHandle | None = None
    synced: asyncio.Event = field(default_factory=asyncio.Event)


class Hub:
    def __init__(self, factory: InformerFactory, linger_s: float) -> None:
        self.factory, self.linger_s = factory, linger_s
        self.entries: dict[MapKey, Entry] = {}
        self.source = secrets.token_hex(4)
        self.generation = 0
        self.loop = asyncio.get_running_loop()

    def acquire(self, key: MapKey) -> Entry:
        entry = self.entries.get(key)
        if entry is None:
            informer = self.factory(key, self._deliverer(key))
            entry = self.entries[key] = Entry(key, informer)
            informer.start()
            metrics.INFORMER_STARTS.inc()
            metrics.INFORMERS.set(len(self.entries))
            log.info("%s: informer started", key)
        if entry.stopper is not None:
            entry.stopper.cancel()
            entry.stopper = None
        entry.users += 1
        return entry

    def release(self, entry: Entry) -> None:
        entry.users -= 1
        if entry.users > 0 or self.entries.get(entry.key) is not entry:
            return
        if self.linger_s <= 0:
            self._stop(entry)
        else:
            entry.stopper = self.loop.call_later(self.linger_s, self._stop, entry)

    def _stop(self, entry: Entry) -> None:
        if entry.users > 0 or self.entries.get(entry.key) is not entry:
            return
        del self.entries[entry.key]
        entry.informer.stop()
        metrics.INFORMER_STOPS.inc()
        metrics.INFORMERS.set(len(self.entries))
        log.info("%s: informer stopped (no subscribers)", entry.key)

    def stop_all(self) -> None:
        for entry in list(self.entries.values()):
            entry.users = 0
            self._stop(entry)

    def _deliverer(self, key: MapKey) -> Callable[[DirMap, float], None]:
        def deliver(m: DirMap, arrived: float) -> None:  # an informer thread
            self.loop.call_soon_threadsafe(self._publish, key, m, arrived)

        return deliver

    def _publish(self, key: MapKey, m: DirMap, arrived: float) -> None:
        entry = self.entries.get(key)
        if entry is None or entry.informer.stopped.is_set():
            return  # a late delivery of a stopped informer
        self.generation += 1
        entry.map, entry.generation, entry.arrived = m, self.generation, arrived
        entry.line = snapshot_line(m, self.source, self.generation)
        entry.synced.set()
        metrics.MAP_CHANGES.inc()
        for subscriber in entry.subscribers:
            subscriber.offer(entry.line, arrived)

    def describe(self, entry: Entry) -> dict[str, Any]:
        inf = entry.informer
        return {"generation": entry.generation, "source": self.source,
                "subscribers": len(entry.subscribers), "users": entry.users,
                "lists": dict(inf.lists), "events": inf.events,
                "map": to_wire(entry.map) if entry.map is not None else None}


def snapshot_line(m: DirMap, source: str, generation: int) -> bytes:
    return orjson.dumps({"type": "snapshot", "source": source, "generation": generation,
                         "map": to_wire(m)}) + b"\n"


def heartbeat_line(source: str, generation: int, synced: bool, trust: str = "") -> bytes:
    """A heartbeat; with ``trust`` (the CA bundle, PEM) on a stream's first line and
    whenever the bundle changes (``directory.trust``)."""
    doc: dict[str, Any] = {"type": "heartbeat", "source": source, "generation": generation,
                           "synced": synced, "time": time.time()}
    if trust:
        doc["trust"] = trust
    return orjson.dumps(doc) + b"\n"
