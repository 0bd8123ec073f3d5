"""A backend's own view of its slots in slot mode (SPEC §6): the reference for app authors.

The backend side of the protocol, as decisions over a small table (the caller
holds the lock and does the I/O):

- A request carries ``X-Shard-Slot``, ``X-Shard-Slots`` (S), ``X-Shard-Epoch``
  and ``X-Shard-Ordinal``. ``admit`` refuses (421, with this backend's latest
  epoch) a slot it has handed off or is handing off, a slot it does not hold
  when it knows its slots (``strict``), and a request addressed to another
  ordinal. Without a seed (not strict) it learns a slot from the first request
  the sidecar addresses to it.
- ``POST /_shard/handoff {"slots", "to", "epoch", "from"?}``: ``begin_handoff``
  says which slots to send (none if they already went to that target: 200
  again), or why not (409: never owned, or already given to someone else).
  From then on the slots are refused; ``end_handoff`` records them as gone
  once the new owner has them, ``abort_handoff`` takes them back if it failed.
  A repeat while the first is still sending raises ``HandoffBusy`` (the caller
  waits and asks again: answering 200 then would let the reshard flip before
  the new owner has the data); a slot left leaving by a handoff that died with
  the process (``restored``) is sent again.
- ``accept`` takes slots (and their data) from the old owner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class HandoffRefused(Exception):
    """409: the message says which slot and why."""


class HandoffBusy(Exception):
    """A handoff of these slots is being sent right now: wait for it, then ask again."""


@dataclass
class SlotTable:
    ordinal: int
    #: True when the table was seeded from the assignment: unknown slots are not ours.
    strict: bool = False
    owned: set[int] = field(default_factory=set)
    #: slot -> (new owner, epoch at which it took over)
    gone: dict[int, tuple[int, int]] = field(default_factory=dict)
    leaving: dict[int, tuple[int, int]] = field(default_factory=dict)
    epoch: int = 0
    #: Every handoff request seen: (slots, to, epoch), oldest first.
    handoffs: list[tuple[tuple[int, ...], int, int]] = field(default_factory=list)
    #: Leaving slots whose data a handoff of this process is sending now (not saved).
    sending: set[int] = field(default_factory=set)

    def seen(self, epoch: int) -> None:
        self.epoch = max(self.epoch, epoch)

    def admit(self, slot: int, ordinal: int, epoch: int) -> str | None:
        """Why this backend must refuse a request for ``slot`` with 421, or None."""
        self.seen(epoch)
        if slot in self.leaving:
            return f"slot {slot} is being handed to ordinal {self.leaving[slot][0]}"
        if slot in self.gone:
            to, at = self.gone[slot]
            return f"slot {slot} moved to ordinal {to} at epoch {at}"
        if ordinal != self.ordinal:
            return f"the request is for ordinal {ordinal}, this is ordinal {self.ordinal}"
        if slot not in self.owned:
            if self.strict:
                return f"slot {slot} is not owned by ordinal {self.ordinal}"
            self.owned.add(slot)  # the sidecar's map at this epoch says it is ours
        return None

    def begin_handoff(self, slots: tuple[int, ...], to: int, epoch: int,
                      source: int | None) -> list[int]:
        """The slots to send now (marked leaving); raises HandoffRefused for a 409."""
        busy = [s for s in slots if s in self.sending and self.leaving[s][0] == to]
        if busy:
            raise HandoffBusy(f"slots {busy} are being sent to ordinal {to}")
        self.handoffs.append((slots, to, epoch))
        self.seen(epoch)
        if source is not None and source != self.ordinal:
            raise HandoffRefused(f"this is ordinal {self.ordinal}, not {source}: it never owned "
                                 "these slots")
        send: list[int] = []
        for slot in slots:
            where = self.gone.get(slot) or self.leaving.get(slot)
            if where is not None:
                if where[0] != to:
                    raise HandoffRefused(f"slot {slot} was already handed to ordinal {where[0]}")
                if slot in self.gone:
                    continue  # a repeated handoff to the same target: nothing left to do
            if slot not in self.owned and self.strict:
                raise HandoffRefused(f"slot {slot} was never owned by ordinal {self.ordinal}")
            send.append(slot)
        if to == self.ordinal:
            raise HandoffRefused(f"ordinal {self.ordinal} cannot hand slots to itself")
        for slot in send:
            self.leaving.setdefault(slot, (to, epoch))
        self.sending.update(send)
        return send

    def end_handoff(self, slots: list[int]) -> None:
        for slot in slots:
            self.gone[slot] = self.leaving.pop(slot)
            self.owned.discard(slot)
        self.sending.difference_update(slots)

    def abort_handoff(self, slots: list[int]) -> None:
        for slot in slots:
            self.leaving.pop(slot, None)
        self.sending.difference_update(slots)

    def accept(self, slots: list[int], epoch: int) -> None:
        self.seen(epoch)
        for slot in slots:
            self.owned.add(slot)
            self.gone.pop(slot, None)
            self.leaving.pop(slot, None)

    def describe(self) -> dict[str, object]:
        """The table as JSON (``/_state``, and the state file: ``restored`` reads it)."""
        return {"epoch": self.epoch, "strict": self.strict, "owned": sorted(self.owned),
                "gone": {str(s): list(v) for s, v in sorted(self.gone.items())},
                "leaving": {str(s): list(v) for s, v in sorted(self.leaving.items())},
                "handoffs": [{"slots": list(s), "to": t, "epoch": e}
                             for s, t, e in self.handoffs]}


def restored(ordinal: int, saved: dict[str, Any]) -> SlotTable:
    """The table ``describe`` saved. A slot it was handing off stays refused; nothing is
    being sent any more, so the next handoff request for it sends it again."""
    def pairs(key: str) -> dict[int, tuple[int, int]]:
        return {int(s): (int(v[0]), int(v[1])) for s, v in saved.get(key, {}).items()}

    return SlotTable(ordinal, strict=bool(saved["strict"]), owned=set(saved["owned"]),
                     gone=pairs("gone"), leaving=pairs("leaving"), epoch=int(saved["epoch"]),
                     handoffs=[(tuple(h["slots"]), h["to"], h["epoch"])
                               for h in saved["handoffs"]])
