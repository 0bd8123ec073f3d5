"""Slot mode on the request path: pure helpers for the sidecar's integration (SPEC §6).

``route`` resolves a key to (slot, owner, migration) on an immutable ``SlotMap``;
``fencing_headers`` are the upstream header lines; ``refused_epoch`` reads a
backend's 421; ``supersedes`` says whether a new map may replace the current one,
``next_slots`` which map a route goes on with, and ``fences`` precomputes the
upstream lines per ordinal (``shardmap`` builds every route state with them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.slots import EPOCH, SLOTS, Migration, SlotError, SlotMap, parse_epoch, slot_for


@dataclass(frozen=True)
class SlotRoute:
    """Where a key goes in slot mode: its slot, the owning pod ordinal (None before
    --init), and the migration holding the slot (None when it is not in flight)."""

    slot: int
    ordinal: int | None
    migrating: Migration | None


def route(smap: SlotMap, key: str, strategy: str) -> SlotRoute:
    slot = slot_for(key, strategy, smap.slots)
    return SlotRoute(slot, smap.owner(slot), smap.in_flight.get(slot))


def fencing_headers(smap: SlotMap, slot: int, ordinal: int) -> bytes:
    """The upstream request's slot-mode header lines (instead of X-Shard-Count)."""
    return (b"X-Shard-Slot: %d\r\nX-Shard-Slots: %d\r\nX-Shard-Epoch: %d\r\n"
            b"X-Shard-Ordinal: %d\r\n" % (slot, smap.slots, smap.epoch, ordinal))


def refused_epoch(value: str | bytes | None) -> int | None:
    """The epoch in a 421's ``X-Shard-Epoch`` (wait for the map to reach it), or None
    when absent or not an epoch."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    try:
        return parse_epoch(text)
    except SlotError:
        return None


def supersedes(old: SlotMap | None, new: SlotMap) -> str:
    """Why ``new`` must not replace ``old`` ("" when it may): the epoch only grows, and
    S is fixed. The caller keeps ``old`` and logs the reason."""
    if old is None:
        return ""
    if new.slots != old.slots:
        return f"{SLOTS} changed from {old.slots} to {new.slots}; S is fixed for a StatefulSet"
    if new.epoch < old.epoch:
        return f"{EPOCH} went back from {old.epoch} to {new.epoch}"
    if new.epoch == old.epoch and new != old:
        return f"the map changed but {EPOCH} stayed at {new.epoch}"
    return ""


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
