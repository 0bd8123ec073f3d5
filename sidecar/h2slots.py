"""Slot mode over HTTP/2 (SPEC §6, §8): the fenced request head and a backend's 421. Pure.

Design rules:
- The slot -> ordinal decision is ``routing.owner`` (``slot_state.resolve_slot``, the
  function HTTP/1.1 uses); this module only writes what it decided as HTTP/2 fields.
- A slot-mode request carries ``x-shard-slot``, ``x-shard-slots``, ``x-shard-epoch``
  and ``x-shard-ordinal`` (lower case, HTTP/2), never ``x-shard-count``; a client's
  own fencing fields are dropped, so a backend only ever reads the sidecar's.
- A 421 is read as HTTP/1.1 reads it (``slot_routing.refused_epoch``), and what to do
  about it is a value (``Misdirected``): wait for an epoch, or refuse with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sidecar.h2headers import Headers, header, upstream_request
from sidecar.routing import Routed
from sidecar.slot_routing import refused_epoch

#: Fields only the sidecar may send to a slot-mode backend (x-shard-ordinal is
#: already replaced by ``upstream_request``).
_FENCING: Final = frozenset({b"x-shard-count", b"x-shard-slot", b"x-shard-slots",
                             b"x-shard-epoch"})
MISDIRECTED: Final = b"421"


def request_head(headers: Headers, routed: Routed) -> Headers:
    """The backend's request head: as in default mode, fenced in slot mode."""
    state = routed.state
    head = upstream_request(headers, routed.upstream_path, routed.ordinal, state.count)
    smap = state.slotmap
    if routed.slot < 0 or smap is None:
        return head
    out = [(n, v) for n, v in head if n not in _FENCING]
    out += [(b"x-shard-slot", b"%d" % routed.slot), (b"x-shard-slots", b"%d" % smap.slots),
            (b"x-shard-epoch", b"%d" % smap.epoch)]
    return out


@dataclass(frozen=True)
class Misdirected:
    """What a 421 from a slot-mode backend asks for: wait for the map to reach ``epoch``
    (then route once more), or, with ``epoch`` None, answer 503 saying ``why``."""

    where: str
    sent: int
    epoch: int | None
    why: str = ""


def misdirected(routed: Routed, response: Headers, replayable: bool, replayed: bool,
                limit: int) -> Misdirected | None:
    """None when ``response`` is not a slot-mode 421 (it is relayed as it is)."""
    smap = routed.state.slotmap
    if routed.slot < 0 or smap is None or header(response, b":status") != MISDIRECTED:
        return None
    epoch = refused_epoch(header(response, b"x-shard-epoch"))
    sent = smap.epoch
    said = "no epoch" if epoch is None else f"epoch {epoch}"
    where = (f"ordinal {routed.ordinal} of route '{routed.state.name}' refused the request "
             f"(421, {said})")
    if replayed:
        return Misdirected(where, sent, None, f"{where} after the request was replayed to it "
                           "once already (after an earlier 421)")
    if not replayable:
        return Misdirected(where, sent, None, f"{where} after its body, over {limit} bytes "
                           "(--max-json-body), was streamed to it: it cannot be replayed")
    if epoch is None or epoch <= sent:
        return Misdirected(where, sent, None, f"{where}, but the request was routed at epoch "
                           f"{sent}: no newer map to wait for")
    return Misdirected(where, sent, epoch)
