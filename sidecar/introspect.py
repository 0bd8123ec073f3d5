"""``/_shard/*`` on the data port: what the sidecar believes, for humans and scripts.

- ``GET /_shard/routes``: the whole map.
- ``GET /_shard/resolve?route=R&key=K``: who owns K, whether or not it is ready.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from sidecar.errors import ProxyError, json_response, render
from sidecar.shardfn import ordinal_for
from sidecar.shardmap import RouteState, ShardMap
from sidecar.slot_state import resolve_slot


def introspect(shard_map: ShardMap, method: bytes, path: bytes, query: bytes) -> bytes:
    """The full response for an introspection request."""
    if method not in (b"GET", b"HEAD"):
        return render(ProxyError("method_not_allowed", "/_shard/ endpoints only answer GET"))
    if path == b"/routes":
        return json_response(shard_map.describe())
    if path == b"/resolve":
        try:
            return json_response(resolve_info(shard_map, query))
        except ProxyError as err:
            return render(err)
    return render(ProxyError("not_found", f"no endpoint /_shard{path.decode('latin-1')}: "
                             "try /_shard/routes or /_shard/resolve?route=R&key=K"))


def resolve_info(shard_map: ShardMap, query: bytes) -> dict[str, Any]:
    try:
        params = parse_qs(query.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise ProxyError("bad_request", "the query string is not UTF-8") from None
    route, key = params.get("route", [""])[0], params.get("key", [""])[0]
    if not route or not key:
        raise ProxyError("bad_request", "give both route=<route> and key=<key>")
    state = shard_map.get(route)
    if state is None:
        raise ProxyError("unknown_route", f"no route '{route}'", route=route)
    info: dict[str, Any] = {"route": route, "key": key, "strategy": state.spec.strategy,
                            "count": state.count, "start": state.start, "synced": state.synced}
    if state.slotted:
        return {**info, **slot_info(state, key)}
    if not state.synced or state.count < 1:
        return {**info, "ordinal": None, "pod": None, "address": None, "ready": False}
    shard = state.shard(ordinal_for(key, state.spec.strategy, state.count))
    address = f"{shard.address[0]}:{shard.address[1]}" if shard.address else None
    # The pod's own ordinal (start + the key function's result), as X-Shard-Ordinal says.
    return {**info, "ordinal": shard.ordinal, "pod": shard.pod or None, "address": address,
            "ready": shard.ready and shard.address is not None}


def slot_info(state: RouteState, key: str) -> dict[str, Any]:
    """Slot mode: the key's slot and its owner at the map's epoch; ``problem`` says why
    a request for it would not be sent now (moving, owner down, no assignment)."""
    smap = state.slotmap
    info: dict[str, Any] = {"slots": smap.slots if smap else None,
                            "epoch": smap.epoch if smap else None, "slot": None,
                            "ordinal": None, "pod": None, "address": None, "ready": False}
    if smap is not None:
        info["slot"] = slot = smap.slot_for(key, state.strategy)
        info["ordinal"] = ordinal = smap.owner(slot)
        index = -1 if ordinal is None else ordinal - state.start
        if 0 <= index < state.count:
            shard = state.shard(index)
            info["pod"] = shard.pod or None
            info["address"] = f"{shard.address[0]}:{shard.address[1]}" if shard.address else None
    try:
        resolve_slot(state, key)
        info["ready"] = True
    except ProxyError as err:
        info["problem"] = err.message
    return info
