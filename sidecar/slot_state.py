"""Slot mode in the sidecar's map (SPEC §6): who owns a key.

Pure: ``resolve_slot`` is slot mode's ``shardmap.resolve``. ``next_slots`` (which slot
map a route uses) and ``fences`` (the upstream header lines precomputed per map and
ordinal) live in ``slot_routing``, below ``shardmap``, which builds its states with
them; they are named here too, where callers have always found them.
"""

from __future__ import annotations

from sidecar.errors import ProxyError
from sidecar.shardmap import RouteState, Shard
from sidecar.slot_routing import fences, next_slots
from sidecar.slots import ASSIGNMENT, SLOTS, slot_for

__all__ = ["fences", "next_slots", "resolve_slot"]


def resolve_slot(state: RouteState, key: str) -> tuple[Shard, int, bytes]:
    """The owner of ``key`` in slot mode as (its shard, the key's slot, the upstream
    fencing header lines); raises 503 errors like ``resolve``. A migrating slot is
    ``shard_unavailable`` with ``moving: true`` (the caller holds it under wait:<ms>).
    A slot that can be sent is decided once per state, then read from its cache."""
    count = state.slot_count
    if count:
        hit = state.slot_cache.get(slot_for(key, state.strategy, count))
        if hit is not None:
            return hit
    found = _resolve(state, key)
    state.slot_cache[found[1]] = found
    return found


def _resolve(state: RouteState, key: str) -> tuple[Shard, int, bytes]:
    name = state.name
    if not state.synced or state.count < 1:
        raise ProxyError("shard_map_not_ready",
                         f"the shard map of route '{name}' is not ready: "
                         f"{state.problem or 'no replicas'}", route=name)
    smap = state.slotmap
    if smap is None:
        raise ProxyError("shard_map_not_ready", f"the slot map of route '{name}' is not "
                         f"usable: {state.slot_problem}", route=name)
    backend = state.spec.backend
    if smap.assignment is None:
        raise ProxyError("shard_map_not_ready", (
            f"statefulset {backend.namespace}/{backend.statefulset} has {SLOTS}={smap.slots} "
            f"but no {ASSIGNMENT}: run 'shardmesh reshard {backend.statefulset} -n "
            f"{backend.namespace} --init'"), route=name, slots=smap.slots, epoch=smap.epoch)
    slot = slot_for(key, state.strategy, smap.slots)
    ordinal = smap.assignment.owners[slot]
    move = smap.in_flight.get(slot)
    if move is not None:
        raise ProxyError("shard_unavailable", (
            f"slot {slot} of route '{name}' is moving from ordinal {move.source} to "
            f"{move.target} (epoch {smap.epoch})"), route=name, ordinal=ordinal, slot=slot,
            epoch=smap.epoch, moving=True)
    index = ordinal - state.start
    if not 0 <= index < state.count:
        last = state.start + state.count - 1
        raise ProxyError("shard_unavailable", (
            f"slot {slot} of route '{name}' belongs to ordinal {ordinal}, which is not one of "
            f"the statefulset's ordinals {state.start}..{last} (epoch {smap.epoch}): "
            "it is unavailable until a reshard moves it"), route=name, ordinal=ordinal,
            slot=slot, epoch=smap.epoch)
    shard = state.shards[index] if index < len(state.shards) else state.shard(index)
    if not shard.ready or shard.address is None:
        raise ProxyError("shard_unavailable", (
            f"ordinal {ordinal} of route '{name}' (pod {shard.pod or backend.statefulset}"
            f"{'' if shard.pod else '-' + str(ordinal)}), owner of slot {slot}, is not ready"),
            route=name, ordinal=ordinal, slot=slot, epoch=smap.epoch)
    fence = state.fences.get(ordinal)
    if fence is None:  # not precomputed (a shard outside the state's list): build it
        fence = fences(smap, (ordinal,))[ordinal]
    return shard, slot, b"X-Shard-Slot: %d\r\n" % slot + fence
