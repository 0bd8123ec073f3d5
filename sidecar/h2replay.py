"""Sending an HTTP/2 request again: after a slot-mode 421, and when a backend did not process it.

Design rules:
- A request's body is kept as it arrives, up to ``--max-json-body`` bytes (the bound
  HTTP/1.1 keeps for a 421 replay) and within one budget for every HTTP/2 stream
  (``--buffer-budget``); past either it is streamed only and cannot be sent again.
  It is dropped once the backend's response begins: the request was processed.
- A 421 from a slot-mode backend (SPEC §6) is never relayed: the call waits (within
  the route's timeout) for the map to reach the 421's epoch, then is routed again from
  scratch, so it only goes where the newest map says, and is replayed once at most.
- A stream the backend did not process (past a GOAWAY's last stream id, or reset with
  REFUSED_STREAM: RFC 9113 §6.8, §8.7) is sent again on the same ordinal's pool (a new
  connection after a GOAWAY), never to another ordinal; else UNAVAILABLE / 503.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Final, cast

from h2.exceptions import H2Error

from sidecar import routing
from sidecar.errors import ProxyError
from sidecar.h2answers import Answers
from sidecar.h2headers import Headers
from sidecar.h2slots import Misdirected, misdirected

if TYPE_CHECKING:
    from sidecar.h2upstream import Stream
    from sidecar.shardmap import RouteState

log = logging.getLogger("shardmesh.sidecar.h2")

#: Times one call is sent again after its backend did not process it.
MAX_RESENDS: Final = 2


class ReplayBudget:
    """Bytes every HTTP/2 stream of a sidecar keeps to send again: ``per_call`` for one
    call, ``limit`` for all of them together."""

    def __init__(self, limit: int, per_call: int) -> None:
        self.limit, self.per_call = limit, per_call
        self.kept = 0

    def take(self, n: int) -> bool:
        if self.kept + n > self.limit:
            return False
        self.kept += n
        return True

    def give(self, n: int) -> None:
        self.kept -= n


class Replays(Answers):
    """Keeps a request to send it again; the 421 and not-processed paths."""

    #: The body so far (None: nothing yet, or ``replay_off``); its bytes taken from the budget.
    replay: list[bytes] | None = None
    replay_bytes: int = 0
    #: Set once the body went past a bound or the response began: never sent again.
    replay_off: bool = False
    #: Replayed after a 421 already (once at most); times sent again as not processed.
    replayed: bool = False
    resends: int = 0

    def keep(self, data: bytes) -> None:
        """Keep a piece of the request body (as it came from the client)."""
        if self.replay_off or not data:
            return
        budget = self.front.shared.replays
        n = len(data)
        if self.replay_bytes + n > budget.per_call or not budget.take(n):
            self.drop_replay()
            return
        if self.replay is None:
            self.replay = []
        self.replay.append(data)
        self.replay_bytes += n

    def drop_replay(self) -> None:
        self.replay_off = True
        self.replay = None
        if self.replay_bytes:
            self.front.shared.replays.give(self.replay_bytes)
            self.replay_bytes = 0

    def finish(self, status: int) -> None:
        if not self.finished:
            self.drop_replay()
        super().finish(status)

    def send_again(self) -> bool:
        """Forget the backend stream; the request (head, kept body, trailers) is sent
        whole on the next ``attach``. False when it cannot be."""
        if self.replay_off or self.response_started or self.finished:
            return False
        for _, flow in self.to_up:  # in ``replay`` too: the client gets its credit now
            if flow:
                with contextlib.suppress(H2Error):
                    self.front.h2.acknowledge_received_data(flow, self.sid)
        self.to_up = [(data, 0) for data in self.replay or ()]
        self.cancel_timer()
        self.up, self.up_sid, self.up_ended = None, 0, False
        return True

    # --- not processed: GOAWAY past its last stream id, REFUSED_STREAM -----------------

    def on_unprocessed(self, reason: str) -> None:
        """The backend did not process this stream: the same ordinal again, or 503."""
        if self.finished:
            return
        up, routed = self.up, self.routed
        assert up is not None and routed is not None
        if self.response_started:  # a backend breaking the rule: lost, not unprocessed
            self.on_lost(reason, prefix=True)
            return
        where = f"ordinal {routed.ordinal} of route '{routed.state.name}' {reason}"
        if self.resends < MAX_RESENDS and self.send_again():
            self.resends += 1
            log.info("%s: sending it again, to the same ordinal", where)
            up.pool.assign(cast("Stream", self))  # a Bridge: the full Stream
            return
        why = ("its body was over the bound kept to send it again (--max-json-body)"
               if self.resends < MAX_RESENDS else f"it was sent {MAX_RESENDS + 1} times")
        self.up_ended = True
        self.fail(ProxyError("shard_unavailable", f"{where}, and it cannot be sent again: {why}",
                             route=routed.state.name, ordinal=routed.ordinal))

    # --- slot mode: a 421 --------------------------------------------------------------

    def redirected(self, headers: Headers) -> bool:
        """A slot-mode 421 (never relayed): wait for its epoch and route again, or 503.
        Otherwise the response begins, and the body is no longer kept."""
        routed = self.routed
        verdict = None if routed is None or routed.slot < 0 else misdirected(
            routed, headers, not self.replay_off, self.replayed,
            self.front.shared.ctx.settings.max_json_body)
        if verdict is None:
            self.drop_replay()
            return False
        assert routed is not None
        stats = self.front.shared.ctx.stats
        name = routed.state.name
        _count(stats.misdirected, name, str(routed.ordinal))
        self.cancel_timer()
        self.cancel_upstream()  # its 421 body is not wanted
        log.info("%s; it was sent at epoch %d", verdict.where, verdict.sent)
        if verdict.epoch is None:
            self.fail(ProxyError("shard_unavailable", verdict.why, route=name,
                                 ordinal=routed.ordinal, epoch=verdict.sent))
            return True
        _count(stats.slot_held, name, "epoch")
        self.task = self.loop.create_task(self.catch_up(routed, verdict))
        return True

    def held(self, state: RouteState, error: ProxyError) -> None:
        """A slot-mode call held under ``wait:<ms>``: counted as HTTP/1.1 counts it."""
        if state.slotted:
            _count(self.front.shared.ctx.stats.slot_held, state.name,
                   "migrating" if error.details.get("moving") else "unavailable")

    async def catch_up(self, routed: routing.Routed, verdict: Misdirected) -> None:
        """Wait (within the route's timeout) for a map at the 421's epoch, then route the
        same key again on it: the request goes only where that map says."""
        name, epoch = routed.state.name, verdict.epoch
        assert epoch is not None
        reached = await self.front.shared.ctx.map.at_epoch(
            name, epoch, self.loop.time() + routed.state.timeout_s, self.loop.time,
            verdict.where)
        self.task = None
        if isinstance(reached, ProxyError):
            self.fail(reached)
            return
        if not self.send_again():  # the body went past the bound while waiting
            self.fail(ProxyError("shard_unavailable", (
                f"{verdict.where}, and its body grew past the bound kept to replay it "
                "(--max-json-body) while the sidecar waited for the map"), route=name))
            return
        self.replayed = True
        self.decided(routing.owner(reached, routed.key, routed.upstream_path, True))
        self.front.touch()

    def decided(self, decision: routing.Decision) -> None:
        raise NotImplementedError


def _count(counter: dict[tuple[str, str], int], route: str, label: str) -> None:
    counter[(route, label)] = counter.get((route, label), 0) + 1
