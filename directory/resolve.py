"""``GET /v1/resolve``: a key's owner in a directory map. Pure, no I/O.

The shards come from ``sidecar.discovery.snapshot`` (the sidecar's own code) over
the map's inputs, and the key's index from ``sidecar.shardfn.ordinal_for``; in
slot mode the slot and its owner from ``sidecar.slot_routing.route``. So a
client of the directory and a sidecar always name the same pod.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from directory.maps import DirMap
from sidecar.annotations import Backend, KeySource, RouteSpec
from sidecar.discovery import snapshot
from sidecar.shardfn import STRATEGIES, Strategy, ordinal_for
from sidecar.shardmap import Shard
from sidecar.slot_routing import route

Obj = dict[str, Any]


@dataclass(frozen=True)
class Refusal(Exception):
    """An answer that is not a resolution: HTTP ``status`` with ``code`` and ``message``."""

    status: int
    code: str
    message: str


def strategy_of(text: str | None) -> Strategy:
    value = text or "modulo"
    for strategy in STRATEGIES:
        if strategy == value:
            return strategy
    raise Refusal(400, "invalid_strategy",
                  f"invalid strategy '{value}': expected one of {', '.join(STRATEGIES)}")


def resolve(m: DirMap, key: str, strategy: Strategy) -> Obj:
    """The owner of ``key``: ordinal, pod, address, ready (and slot, slots, epoch in slot
    mode). Raises ``Refusal`` (503 shard_map_not_ready) when the map cannot say."""
    name = str(m.key)
    if not key:
        raise Refusal(400, "missing_shard_key", "the query parameter 'key' is empty or absent")
    if not m.found or m.sts is None:
        raise Refusal(503, "shard_map_not_ready", f"statefulset {name} not found")
    spec = RouteSpec(Backend(m.key.statefulset, m.key.statefulset, m.key.namespace, None),
                     KeySource("header", "X-Shard-Key"), strategy, 0, 0.0)
    shot = snapshot(spec, m.sts, m.pods)
    if m.sts.problem or shot.count < 1:
        raise Refusal(503, "shard_map_not_ready",
                      f"the shard map of statefulset {name} is not ready: "
                      f"{m.sts.problem or 'no replicas'}")
    out: Obj = {"namespace": m.key.namespace, "statefulset": m.key.statefulset, "key": key,
                "strategy": strategy, "count": shot.count, "start": shot.start}
    shard: Shard | None
    if m.slot_map is None:
        index = ordinal_for(key, strategy, shot.count)
        shard = shot.shards[index]
        ordinal = shard.ordinal
    else:
        where = route(m.slot_map, key, strategy)
        if where.ordinal is None:
            raise Refusal(503, "shard_map_not_ready",
                          f"statefulset {name} is in slot mode without shard.io/assignment: "
                          f"run 'shardmesh reshard {m.key.statefulset} --init "
                          f"--namespace {m.key.namespace}'")
        ordinal = where.ordinal
        out.update(slot=where.slot, slots=m.slot_map.slots, epoch=m.slot_map.epoch,
                   migrating=str(where.migrating) if where.migrating else None)
        out.pop("count")
        index = ordinal - shot.start
        shard = shot.shards[index] if 0 <= index < len(shot.shards) else None
    pod = next((p for p in m.pods if p.ordinal == ordinal), None)
    out.update(ordinal=ordinal, pod=pod.name if pod else f"{m.key.statefulset}-{ordinal}",
               ip=pod.ip if pod else None,
               address=f"{pod.ip}:{m.sts.template_port}" if pod and pod.ip and m.sts.template_port
               else None,
               ready=bool(shard is not None and pod is not None and pod.ready))
    return out
