"""Slot mode in the sidecar's map (SPEC §6): which slot map a route uses, and who owns a key.

Pure: discovery hands over what a StatefulSet's annotations parse to; ``next_slots``
decides whether that replaces the route's map (else the last good map stays, with
the reason); ``resolve_slot`` is slot mode's ``shardmap.resolve``; ``fences`` are
the upstream header lines precomputed per (map, ordinal), so a request only adds
its ``X-Shard-Slot`` line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from sidecar.errors import ProxyError
from sidecar.slot_routing import supersedes
from sidecar.slots import ASSIGNMENT, SLOTS, SlotMap, slot_for

if TYPE_CHECKING:
    from sidecar.shardmap import RouteState, Shard


def next_slots(old: SlotMap | None, parsed: SlotMap | None,
               error: str) -> tuple[SlotMap | None, bool, str]:
    """(the map to route by, slot mode?, the problem to show) after an annotation change.

    ``error`` is a ``SlotError``'s message (slot mode was asked for, the map is bad).
    A bad map or one that may not replace ``old`` (``supersedes``) keeps ``old``;
    with no good map yet nothing is routed: a default-mode guess could misroute.
    No ``shard.io/slots`` at all is default mode.
    """
    kept = (f"; keeping the map at epoch {old.epoch}" if old is not None
            else "; no good map yet, nothing is routed")
    if error:
        return old, True, error + kept
    if parsed is None:
        return None, False, ""
    why = supersedes(old, parsed)
    if why:
        return old, True, why + kept
    return parsed, True, ""


def fences(smap: SlotMap | None, ordinals: Iterable[int]) -> dict[int, bytes]:
    """ordinal -> its X-Shard-Slots, X-Shard-Epoch and X-Shard-Ordinal lines (the
    slot's own line is per request)."""
    if smap is None:
        return {}
    return {o: b"X-Shard-Slots: %d\r\nX-Shard-Epoch: %d\r\nX-Shard-Ordinal: %d\r\n"
            % (smap.slots, smap.epoch, o) for o in ordinals}


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
