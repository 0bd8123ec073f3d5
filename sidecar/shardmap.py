"""The shard map: for each route, the count N and each shard's pod (ordinal, ready, address).

Design rules:
- Shard i (the key function's result, 0..N-1) is served by the pod with ordinal
  ``start + i``, where start is the StatefulSet's ``spec.ordinals.start``. The
  map holds that pod ordinal in each shard, built once per change, so nothing
  is added per request and every header, error and metric names the pod.
- A ``RouteState`` is immutable. An update replaces it whole, so a request that
  resolved against one state never sees half of the next one.
- ``resolve`` is the only place a key becomes an (ordinal, shard) pair; it is
  pure given a state and never returns a shard of another ordinal.
- Updates arrive on the event loop thread (discovery hands them over with
  ``call_soon_threadsafe``); waiters on a route are woken after every update.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sidecar.annotations import KeySource, RouteSpec
from sidecar.errors import ProxyError
from sidecar.http11 import title_case
from sidecar.shardfn import ordinal_for
from sidecar.slot_routing import fences, next_slots
from sidecar.slots import SlotMap, format_migrating

log = logging.getLogger("shardmesh.sidecar.shardmap")


@dataclass(frozen=True)
class Shard:
    """One shard of a route, named by its pod's own ordinal (start + the shard's index).

    ``address`` is None until the pod has an IP and a port.
    """

    ordinal: int
    ready: bool = False
    address: tuple[str, int] | None = None
    pod: str = ""
    #: The route's N, for X-Shard-Count. RouteState sets it on the shards it holds.
    count: int = field(default=0, compare=False, repr=False)
    # Precomputed for the hot path: the client's response header, and the upstream
    # request's X-Shard-Ordinal and X-Shard-Count lines.
    response_header: bytes = field(init=False, compare=False, repr=False)
    upstream_header: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "response_header", b"X-Shard-Ordinal: %d\r\n" % self.ordinal)
        object.__setattr__(self, "upstream_header", b"X-Shard-Ordinal: %d\r\nX-Shard-Count: %d\r\n"
                           % (self.ordinal, self.count))


@dataclass(frozen=True)
class RouteState:
    spec: RouteSpec
    #: False until the first full list of the StatefulSet and its pods.
    synced: bool = False
    count: int = 0
    #: The StatefulSet's spec.ordinals.start: shards[i] is the pod with ordinal start + i.
    start: int = 0
    shards: tuple[Shard, ...] = ()
    #: Why the map is not usable yet (shown by /_shard/routes), e.g. "statefulset not found".
    problem: str = ""
    synced_at: float = 0.0
    #: Slot mode (SPEC §6): the StatefulSet has shard.io/slots. ``slotmap`` is the last
    #: good map (None: none yet); ``slot_problem`` says why a newer one was refused.
    slotted: bool = False
    slotmap: SlotMap | None = None
    slot_problem: str = ""
    # Derived from spec and count for the hot path, as native fields: reading them
    # through RouteSpec (a plain Python object) cost an attribute lookup each.
    name: str = field(init=False, compare=False, repr=False)
    key: KeySource = field(init=False, compare=False, repr=False)
    key_kind: str = field(init=False, compare=False, repr=False)
    #: The lower-cased key header name, if the key is a header, and its usual spelling.
    key_header: bytes = field(init=False, compare=False, repr=False)
    key_spelling: bytes = field(init=False, compare=False, repr=False)
    strategy: str = field(init=False, compare=False, repr=False)
    timeout_s: float = field(init=False, compare=False, repr=False)
    #: ordinal -> its precomputed slot-mode upstream header lines (slot_state.fences).
    fences: dict[int, bytes] = field(init=False, compare=False, repr=False)
    #: S when keys can be routed by slot (synced, a map with an assignment), else 0.
    slot_count: int = field(init=False, compare=False, repr=False)
    #: slot -> (shard, slot, fence) for slots this state sends (slot_state.resolve_slot);
    #: filled as requests come, new with every state.
    slot_cache: dict[int, tuple[Shard, int, bytes]] = field(init=False, compare=False,
                                                             repr=False)

    def __post_init__(self) -> None:
        spec = self.spec
        header = spec.key.name.lower().encode() if spec.key.kind == "header" else b""
        derived: dict[str, object] = {
            "name": spec.name, "key": spec.key, "key_kind": spec.key.kind,
            "key_header": header, "key_spelling": title_case(header),
            "strategy": spec.strategy, "timeout_s": spec.timeout_s,
            "fences": fences(self.slotmap, [s.ordinal for s in self.shards]),
            "slot_count": self.slotmap.slots if (
                self.slotmap is not None and self.slotmap.assignment is not None
                and self.synced and self.count >= 1) else 0,
            "slot_cache": {},
        }
        if any(s.count != self.count for s in self.shards):
            # New shards, not changed ones: a state still in use keeps its own headers.
            derived["shards"] = tuple(replace(s, count=self.count) for s in self.shards)
        for attribute, value in derived.items():
            object.__setattr__(self, attribute, value)

    @classmethod
    def initial(cls, spec: RouteSpec) -> RouteState:
        return cls(spec=spec, problem="not synced yet")

    def shard(self, index: int) -> Shard:
        """The shard for key-function result ``index`` (0..N-1)."""
        if index < len(self.shards):
            return self.shards[index]
        return Shard(ordinal=self.start + index, count=self.count)

    def describe(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "route": spec.name, "statefulset": spec.backend.statefulset,
            "namespace": spec.backend.namespace, "port": spec.backend.port,
            "key": str(spec.key), "strategy": spec.strategy, "wait_ms": spec.wait_ms,
            "timeout_s": spec.timeout_s, "synced": self.synced, "count": self.count,
            "start": self.start,
            "problem": self.problem or self.slot_problem or None,
            **self.describe_slots(),
            "shards": [
                {"ordinal": s.ordinal, "ready": s.ready, "pod": s.pod or None,
                 "address": f"{s.address[0]}:{s.address[1]}" if s.address else None}
                for s in (self.shard(i) for i in range(self.count))
            ],
        }

    def describe_slots(self) -> dict[str, Any]:
        smap = self.slotmap
        if not self.slotted:
            return {"mode": "default"}
        if smap is None:
            return {"mode": "slots", "slots": None, "epoch": None, "assignment": None,
                    "migrating": None}
        assignment = smap.assignment
        return {"mode": "slots", "slots": smap.slots, "epoch": smap.epoch,
                "assignment": None if assignment is None else {
                    "ranges": str(assignment),
                    "slots_per_ordinal": {str(o): n for o, n in sorted(
                        assignment.counts().items())}},
                "migrating": format_migrating(smap.migrating) or None}


def resolve(state: RouteState, key: str) -> tuple[int, Shard]:
    """The owner of ``key`` as (its pod ordinal, its shard); raises 503 errors when the map
    cannot say or the owner is down."""
    if not state.synced or state.count < 1:
        raise ProxyError("shard_map_not_ready",
                         f"the shard map of route '{state.spec.name}' is not ready: "
                         f"{state.problem or 'no replicas'}", route=state.spec.name)
    index = ordinal_for(key, state.strategy, state.count)
    shards = state.shards
    shard = shards[index] if index < len(shards) else state.shard(index)
    if not shard.ready or shard.address is None:
        ordinal = shard.ordinal
        raise ProxyError("shard_unavailable",
                         f"ordinal {ordinal} of route '{state.spec.name}' "
                         f"(pod {shard.pod or state.spec.backend.statefulset + '-' + str(ordinal)})"
                         " is not ready", route=state.spec.name, ordinal=ordinal)
    return shard.ordinal, shard


def misnumbered(start: int, shards: Sequence[Shard]) -> str:
    """Why ``shards`` are not the pods ``start, start+1, ...`` in order ("" when they are)."""
    for index, shard in enumerate(shards):
        if shard.ordinal != start + index:
            return (f"shard {index} is ordinal {shard.ordinal}, expected {start + index} "
                    f"(ordinals start at {start})")
    return ""


Listener = Callable[[RouteState | None, RouteState | None], None]


class ShardMap:
    """All routes by name; the live, mutable holder of the immutable route states."""

    def __init__(self) -> None:
        self.routes: dict[bytes, RouteState] = {}
        self.generation = 0
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Called with (old, new) on every change; new is None when a route goes away."""
        self._listeners.append(listener)

    def get(self, name: str) -> RouteState | None:
        return self.routes.get(name.encode())

    def set_specs(self, specs: Iterable[RouteSpec]) -> list[RouteSpec]:
        """Make the routes exactly ``specs``; returns those whose map must be (re)built.

        A route whose backend (StatefulSet, namespace, port) changed starts
        unsynced again, so nothing is routed with the old StatefulSet's map. A
        change of key, strategy, wait or timeout applies at once to the map it has.
        """
        wanted = {s.name.encode(): s for s in specs}
        rebuild: list[RouteSpec] = []
        for name in list(self.routes):
            if name not in wanted:
                self._set(name, None)
        for name, spec in wanted.items():
            old = self.routes.get(name)
            if old is None or old.spec.backend != spec.backend:
                rebuild.append(spec)
                self._set(name, RouteState.initial(spec))
            elif old.spec != spec:
                self._set(name, replace(old, spec=spec))
        return rebuild

    def update(self, name: str, *, count: int, shards: Iterable[Shard], problem: str = "",
               synced: bool = True, start: int = 0, slots: SlotMap | None = None,
               slot_error: str = "", keep_slots: bool = False) -> None:
        """A new snapshot for a route (from discovery or static config): ``shards[i]`` is
        the pod with ordinal ``start + i``. ``slots``/``slot_error`` are what the
        StatefulSet's slot annotations parse to (``keep_slots``: unknown, keep them)."""
        key = name.encode()
        old = self.routes.get(key)
        if old is None:
            return  # the route was removed while its watch was delivering
        shards = tuple(shards)
        wrong = misnumbered(start, shards)
        if wrong:
            # A bug upstream of here; an unusable map is better than a misrouting one.
            log.error("route %s: refusing a shard map: %s", name, wrong)
            synced, shards, problem = False, (), f"bad shard map: {wrong}"
        if keep_slots:
            slotmap, slotted, slot_problem = old.slotmap, old.slotted, old.slot_problem
        else:
            slotmap, slotted, slot_problem = next_slots(old.slotmap, slots, slot_error)
        if slot_problem and slot_problem != old.slot_problem:
            log.warning("route %s: slot map refused: %s", name, slot_problem)
        if (old.synced == synced and old.count == count and old.start == start
                and old.shards == shards and old.problem == problem
                and old.slotted == slotted and old.slotmap == slotmap
                and old.slot_problem == slot_problem):
            return  # e.g. a pod's status heartbeat: nothing that routing sees changed
        state = replace(old, synced=synced, count=count, start=start, shards=shards,
                        problem=problem, synced_at=time.monotonic() if synced else old.synced_at,
                        slotted=slotted, slotmap=slotmap, slot_problem=slot_problem)
        self._set(key, state)

    def _set(self, key: bytes, state: RouteState | None) -> None:
        old = self.routes.pop(key, None) if state is None else self.routes.get(key)
        if state is not None:
            self.routes[key] = state
        self.generation += 1
        for listener in self._listeners:
            listener(old, state)
        for future in self._waiters.pop(key.decode(), []):
            if not future.done():
                future.set_result(None)

    def changed(self, name: str) -> asyncio.Future[None]:
        """A future resolved at the next change of route ``name`` (for ``wait:<ms>``)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append(future)
        return future

    async def at_epoch(self, name: str, epoch: int, deadline: float,
                       now: Callable[[], float], where: str) -> RouteState | ProxyError:
        """Route ``name`` once its slot map reaches ``epoch`` (a backend's 421 said so,
        SPEC §6), waiting on its changes until ``deadline`` by ``now``; else the error
        to answer. Both front ends replay a 421 only on what this returns."""
        while True:
            state = self.get(name)
            if state is None:
                return ProxyError("unknown_route", f"route '{name}' was removed", route=name)
            smap = state.slotmap
            if smap is not None and smap.epoch >= epoch:
                return state
            remaining = deadline - now()
            if remaining <= 0:
                return ProxyError("shard_unavailable", (
                    f"{where}, and the map did not reach epoch {epoch} within "
                    f"{state.timeout_s:g}s (it is at {smap.epoch if smap else 'none'})"),
                    route=name, epoch=epoch)
            try:
                async with asyncio.timeout(remaining):
                    await self.changed(name)
            except TimeoutError:
                pass

    @property
    def synced(self) -> bool:
        return all(s.synced for s in self.routes.values())

    def describe(self) -> dict[str, Any]:
        return {"generation": self.generation,
                "routes": [s.describe() for s in self.routes.values()]}
