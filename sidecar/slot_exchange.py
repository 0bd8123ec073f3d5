"""Slot mode on the request path (SPEC §6): route by slot, hold migrating slots, and
replay a request a backend refused with 421.

Design rules:
- Decisions are ``routing.owner``'s (slot_state's pure ``resolve_slot``); this module
  only drives an exchange (send, wait, fail) around them, so exchange.py keeps its
  hot path. It knows the exchange as ``h1relay.Relay``, below ``exchange``.
- A request is sent only to the owner the newest map names. After a 421 carrying
  epoch E above the epoch the request was sent with, the request waits (within the
  route's timeout) for a map at epoch >= E and is routed again from scratch; the
  421 itself never reaches the client.
- To replay, the body sent so far is kept up to ``--max-json-body`` bytes; past
  that the body is streamed only, and a 421 after it can only be a 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from sidecar.errors import ProxyError
from sidecar.h1relay import Relay
from sidecar.routing import NeedBody, Refusal, Routed, owner
from sidecar.slot_routing import refused_epoch
from sidecar.upstream import UpstreamConnection

log = logging.getLogger("shardmesh.sidecar.slots")

_WAITING = ("shard_unavailable", "shard_map_not_ready")
#: Bytes kept for a replay past which they count against the buffer budget (as
#: exchange._PENDING_LIMIT does for a json: body).
_COUNTED = 256 * 1024


def route(ex: Relay, decision: Routed | Refusal) -> None:
    """Act on a slot-mode decision that found the key: send to its slot's owner, hold
    (wait:<ms>) or fail."""
    state, key = decision.state, decision.key
    assert state is not None and key is not None
    ex.slot_key = key
    if ex.replay is None and ex.replay_bytes == 0:
        ex.replay = []  # first routing: keep what is sent, for a replay after a 421
    if isinstance(decision, Routed):
        ex.fence = decision.fence
        ex.send(state, decision.ordinal, decision.shard)
        return
    err = decision.error
    if state.spec.wait_ms and err.code in _WAITING:
        count(ex.conn.ctx.stats.slot_held, state.name, "migrating" if err.details.get(
            "moving") else "unavailable")
        loop = ex.conn.loop
        ex.task = loop.create_task(hold(ex, state.name, key,
                                        ex.conn.now() + state.spec.wait_ms / 1000))
        return
    ex.fail(err)


async def hold(ex: Relay, name: str, key: str, deadline: float) -> None:
    """``wait:<ms>``: resolve again on every map change until sent or the wait is over."""
    ctx = ex.conn.ctx
    while True:
        state = ctx.map.get(name)
        if state is None:
            ex.task = None
            ex.fail(ProxyError("unknown_route", f"route '{name}' was removed", route=name))
            return
        decision = owner(state, key, ex.target, True)
        if isinstance(decision, Refusal):
            err = decision.error
            if err.code not in _WAITING or not await changed(ex, name, deadline):
                ex.task = None
                waited = f"{err.message} (waited {state.spec.wait_ms} ms)"
                ex.fail(ProxyError(err.code, waited, **err.details))
                return
            continue
        assert isinstance(decision, Routed)
        ex.task = None
        ex.fence = decision.fence
        ex.send(state, decision.ordinal, decision.shard)
        return


async def changed(ex: Relay, name: str, deadline: float) -> bool:
    """Wait for the route's next map change; False when ``deadline`` passed first."""
    remaining = deadline - ex.conn.now()
    if remaining <= 0:
        return False
    try:
        async with asyncio.timeout(remaining):
            await ex.conn.ctx.map.changed(name)
    except TimeoutError:
        pass
    return True


def keep(ex: Relay, pieces: Iterable[bytes]) -> None:
    """Keep body bytes sent upstream for a replay, up to the bound; past it, none."""
    replay = ex.replay
    assert replay is not None
    ctx = ex.conn.ctx
    limit = ctx.settings.max_json_body
    for piece in pieces:
        ex.replay_bytes += len(piece)
        if ex.replay_bytes > limit:
            ex.replay = None  # streamed: a 421 now can only be answered with a 503
            return
        replay.append(piece)
    if ex.replay_bytes > _COUNTED:
        ctx.hold(ex.conn, limit + _COUNTED)  # against --buffer-budget, as a json: body


def misdirected(ex: Relay, up: UpstreamConnection) -> None:
    """The backend answered 421: drop it (nothing of it is relayed) and route again."""
    state = ex.state
    assert state is not None and state.slotmap is not None
    name, ordinal, sent = state.name, ex.ordinal, state.slotmap.epoch
    count(ex.conn.ctx.stats.misdirected, name, str(ordinal))
    epoch = refused_epoch(header(up.head, b"x-shard-epoch"))
    up.head_only = False  # else its parser reports a HEAD response done to us
    up.abort()  # cheaper than reading the 421's body; 421s are rare
    ex.upstream = None
    ex.on_upstream_drained()
    ex.deadline = 0.0
    del ex.head[ex.head_base:]
    said = "no epoch" if epoch is None else f"epoch {epoch}"
    where = f"ordinal {ordinal} of route '{name}' refused the request (421, {said})"
    log.info("%s; it was sent at epoch %d", where, sent)
    if ex.replay is None:
        ex.fail(ProxyError("shard_unavailable", (
            f"{where} after its body, over {ex.conn.ctx.settings.max_json_body} bytes "
            "(--max-json-body), was streamed to it: it cannot be replayed"),
            route=name, ordinal=ordinal, epoch=sent))
        return
    if epoch is None or epoch <= sent:
        ex.fail(ProxyError("shard_unavailable", (
            f"{where}, but the request was routed at epoch {sent}: no newer map to wait for"),
            route=name, ordinal=ordinal, epoch=sent))
        return
    count(ex.conn.ctx.stats.slot_held, name, "epoch")
    ex.task = ex.conn.loop.create_task(catch_up(ex, name, epoch, where))


async def catch_up(ex: Relay, name: str, epoch: int, where: str) -> None:
    """Wait (within the route's timeout) for a map at ``epoch``, then route again."""
    ctx = ex.conn.ctx
    state = ctx.map.get(name)
    deadline = ex.conn.now() + (state.timeout_s if state is not None else 0.0)
    reached = await ctx.map.at_epoch(name, epoch, deadline, ex.conn.now, where)
    ex.task = None
    if isinstance(reached, ProxyError):
        ex.fail(reached)
        return
    pending = ex.replay or []
    ex.pending = pending + ex.pending
    ex.pending_bytes = sum(len(p) for p in ex.pending)
    ex.replay, ex.replay_bytes = None, 0
    ex.expect_continue = False  # the client was told to continue once already
    decision = owner(reached, ex.slot_key, ex.target, True)
    assert not isinstance(decision, NeedBody)
    route(ex, decision)


def header(head: list[bytes], name: bytes) -> bytes | None:
    """A response header's value from an upstream head ([status, name, ": ", value, CRLF...])."""
    for i in range(1, len(head) - 3, 4):
        if head[i].lower() == name:
            return head[i + 2]
    return None


def count(counter: dict[tuple[str, str], int], route: str, label: str) -> None:
    counter[(route, label)] = counter.get((route, label), 0) + 1
