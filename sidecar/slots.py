"""Slot mode (SPEC §6): the shard map a StatefulSet carries in its annotations. Pure, no I/O.

Used by the sidecar (routing), the ``shardmesh reshard`` command and, later, the
directory, so all three read and write the annotations the same way.

- ``shard.io/slots``: S, the number of virtual shards (1..65536). A key's slot is
  the route's strategy over S (``slot_for``), so the published vectors apply.
- ``shard.io/assignment``: slot -> POD ordinal, ranges covering every slot
  exactly once (``0-21:0,22-42:1,43-63:2``; a single slot is ``5:1``).
- ``shard.io/epoch``: one non-negative integer for the whole map; it only grows.
- ``shard.io/migrating``: slots in flight, ``<range>:<from>><to>`` (``0-7:0>3``),
  comma-separated. Every slot in flight is owned by its ``from`` in the assignment.
- ``shard.io/reshard-lease``: ``holder=<id>,expires=<RFC 3339 UTC>`` (slots.lease).

Every parse error is a ``SlotError`` whose message names the annotation and the
value (truncated when long) and says why; nothing else is ever raised on bad input.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from sidecar.shardfn import ordinal_for

SLOTS = "shard.io/slots"
ASSIGNMENT = "shard.io/assignment"
EPOCH = "shard.io/epoch"
MIGRATING = "shard.io/migrating"
LEASE = "shard.io/reshard-lease"
ANNOTATIONS = (SLOTS, ASSIGNMENT, EPOCH, MIGRATING, LEASE)

MAX_SLOTS = 65536
#: Epochs and ordinals are bounded so a typo cannot make a number of a million digits.
MAX_EPOCH = (1 << 63) - 1
MAX_ORDINAL = (1 << 31) - 1
_SHOWN = 80  # characters of a bad value quoted in an error
_DIGITS = re.compile(r"[0-9]{1,19}")
_RANGE = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")


class SlotError(ValueError):
    """A slot annotation is invalid; the message names it, its value and why."""

    def __init__(self, annotation: str, value: str, why: str) -> None:
        shown = value if len(value) <= _SHOWN else value[:_SHOWN] + f"... ({len(value)} chars)"
        super().__init__(f"invalid value '{shown}' for annotation '{annotation}': {why}")
        self.annotation, self.value, self.why = annotation, value, why


def _number(annotation: str, text: str, value: str, what: str, limit: int) -> int:
    """A non-negative decimal integer (ASCII digits only) no larger than ``limit``."""
    text = text.strip()
    if not _DIGITS.fullmatch(text) or int(text) > limit:
        raise SlotError(annotation, value,
                        f"{what} '{text}' is not an integer in 0..{limit}")
    return int(text)


def parse_slots(value: str) -> int:
    count = _number(SLOTS, value, value, "the slot count", MAX_SLOTS)
    if count < 1:
        raise SlotError(SLOTS, value, f"the slot count must be in 1..{MAX_SLOTS}")
    return count


def parse_epoch(value: str) -> int:
    return _number(EPOCH, value, value, "the epoch", MAX_EPOCH)


def _range(annotation: str, text: str, value: str, slots: int) -> tuple[int, int]:
    match = _RANGE.fullmatch(text.strip())
    if match is None:
        raise SlotError(annotation, value, f"'{text}' is not a slot range like 0-7 or 5")
    lo = int(match[1])
    hi = int(match[2]) if match[2] is not None else lo
    if lo > hi:
        raise SlotError(annotation, value, f"range {lo}-{hi} runs backwards")
    if hi >= slots:
        raise SlotError(annotation, value,
                        f"range {text.strip()} goes past the last slot {slots - 1} "
                        f"({SLOTS} is {slots})")
    return lo, hi


def _items(value: str) -> list[str]:
    """Comma-separated items; an empty value has none."""
    return [] if not value.strip() else value.split(",")


def compact(owners: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """(first slot, last slot, owner) for each run of slots with the same owner."""
    lo = 0
    for slot in range(1, len(owners) + 1):
        if slot == len(owners) or owners[slot] != owners[lo]:
            yield lo, slot - 1, owners[lo]
            lo = slot


def _format_range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


@dataclass(frozen=True, eq=False)
class Assignment:
    """slot -> pod ordinal, as an array of S ordinals: one index per lookup."""

    owners: array[int]

    @classmethod
    def of(cls, owners: Iterable[int]) -> Assignment:
        return cls(array("l", owners))

    @property
    def slots(self) -> int:
        return len(self.owners)

    def owner(self, slot: int) -> int:
        return self.owners[slot]

    def counts(self) -> dict[int, int]:
        """Slots held per ordinal (only ordinals that hold any)."""
        held: dict[int, int] = {}
        for owner in self.owners:
            held[owner] = held.get(owner, 0) + 1
        return held

    def slots_of(self, ordinal: int) -> list[int]:
        return [s for s, owner in enumerate(self.owners) if owner == ordinal]

    def moved(self, slots: Iterable[int], to: int) -> Assignment:
        owners = array("l", self.owners)
        for slot in slots:
            owners[slot] = to
        return Assignment(owners)

    def outside(self, start: int, replicas: int) -> dict[int, int]:
        """Slots held per ordinal outside ``start..start+replicas-1`` (scaled away): they
        are unavailable until a reshard gives them to a pod that exists."""
        return {o: n for o, n in self.counts().items() if not start <= o < start + replicas}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Assignment) and self.owners == other.owners

    def __hash__(self) -> int:
        return hash(self.owners.tobytes())

    def __str__(self) -> str:
        return format_assignment(self)


def format_assignment(assignment: Assignment) -> str:
    """The canonical annotation text: ascending, adjacent ranges of one owner merged."""
    return ",".join(f"{_format_range(lo, hi)}:{owner}"
                    for lo, hi, owner in compact(assignment.owners))


def parse_assignment(value: str, slots: int, start: int = 0) -> Assignment:
    """``value`` as an assignment of ``slots`` slots to pod ordinals >= ``start``."""
    owners = array("l", [-1]) * slots
    for item in _items(value):
        where, sep, who = item.rpartition(":")
        if not sep:
            raise SlotError(ASSIGNMENT, value, f"'{item.strip()}' is not <range>:<ordinal>")
        lo, hi = _range(ASSIGNMENT, where, value, slots)
        ordinal = _number(ASSIGNMENT, who, value, "ordinal", MAX_ORDINAL)
        if ordinal < start:
            raise SlotError(ASSIGNMENT, value,
                            f"ordinal {ordinal} is below spec.ordinals.start {start}")
        for slot in range(lo, hi + 1):
            if owners[slot] != -1:
                raise SlotError(ASSIGNMENT, value,
                                f"slot {slot} is assigned twice (to {owners[slot]} and {ordinal})")
            owners[slot] = ordinal
    missing = [s for s, owner in enumerate(owners) if owner == -1]
    if missing:
        runs = ",".join(_format_range(lo, hi) for lo, hi, _ in compact_slots(missing))
        shown = runs if len(runs) <= 40 else runs[:40] + "..."
        raise SlotError(ASSIGNMENT, value,
                        f"{len(missing)} of {slots} slots have no owner ({shown}); "
                        "every slot needs exactly one")
    return Assignment(owners)


def compact_slots(slots: Iterable[int]) -> Iterator[tuple[int, int, int]]:
    """(first, last, 0) for each run of consecutive numbers in ascending ``slots``."""
    ordered = sorted(set(slots))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        yield ordered[i], ordered[j], 0
        i = j + 1


def format_slot_list(slots: Iterable[int]) -> str:
    """``0-7,12`` for slots 0..7 and 12."""
    return ",".join(_format_range(lo, hi) for lo, hi, _ in compact_slots(slots))


def initial(slots: int, start: int, replicas: int) -> Assignment:
    """``shardmesh reshard --init``: slot s -> start + floor(s * N / S)."""
    if not 1 <= slots <= MAX_SLOTS or replicas < 1 or start < 0:
        raise ValueError(f"need 1 <= slots <= {MAX_SLOTS}, replicas >= 1, start >= 0; "
                         f"got slots={slots}, replicas={replicas}, start={start}")
    return Assignment.of(start + s * replicas // slots for s in range(slots))


@dataclass(frozen=True)
class Migration:
    """Slots ``lo..hi`` in flight from pod ordinal ``source`` to ``target``."""

    lo: int
    hi: int
    source: int
    target: int

    def slots(self) -> range:
        return range(self.lo, self.hi + 1)

    def __str__(self) -> str:
        return f"{_format_range(self.lo, self.hi)}:{self.source}>{self.target}"


def migrations_for(slots: Iterable[int], source: int, target: int) -> tuple[Migration, ...]:
    return tuple(Migration(lo, hi, source, target) for lo, hi, _ in compact_slots(slots))


def format_migrating(migrations: Iterable[Migration]) -> str:
    return ",".join(str(m) for m in sorted(migrations, key=lambda m: m.lo))


def parse_migrating(value: str, slots: int) -> tuple[Migration, ...]:
    found: list[Migration] = []
    seen: dict[int, Migration] = {}
    for item in _items(value):
        where, sep, move = item.rpartition(":")
        source, arrow, target = move.partition(">")
        if not sep or not arrow:
            raise SlotError(MIGRATING, value, f"'{item.strip()}' is not <range>:<from>><to>")
        lo, hi = _range(MIGRATING, where, value, slots)
        m = Migration(lo, hi, _number(MIGRATING, source, value, "ordinal", MAX_ORDINAL),
                      _number(MIGRATING, target, value, "ordinal", MAX_ORDINAL))
        if m.source == m.target:
            raise SlotError(MIGRATING, value, f"'{item.strip()}' moves slots to their own owner")
        for slot in m.slots():
            if slot in seen:
                raise SlotError(MIGRATING, value, f"slot {slot} is in flight twice")
            seen[slot] = m
        found.append(m)
    return tuple(sorted(found, key=lambda m: m.lo))


@dataclass(frozen=True)
class SlotMap:
    """The parsed slot annotations of one StatefulSet.

    ``assignment`` is None until ``shardmesh reshard --init`` (requests get 503
    ``shard_map_not_ready`` then). ``in_flight`` maps each migrating slot to its
    migration, for the sidecar to hold those requests.
    """

    slots: int
    assignment: Assignment | None = None
    epoch: int = 0
    migrating: tuple[Migration, ...] = ()
    in_flight: dict[int, Migration] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_flight",
                           {s: m for m in self.migrating for s in m.slots()})

    def slot_for(self, key: str, strategy: str) -> int:
        return slot_for(key, strategy, self.slots)

    def owner(self, slot: int) -> int | None:
        """The pod ordinal that owns ``slot`` at this epoch, or None before --init."""
        return None if self.assignment is None else self.assignment.owners[slot]

    def annotations(self) -> dict[str, str]:
        """The canonical annotation texts (absent ones are left out)."""
        out = {SLOTS: str(self.slots), EPOCH: str(self.epoch)}
        if self.assignment is not None:
            out[ASSIGNMENT] = format_assignment(self.assignment)
        if self.migrating:
            out[MIGRATING] = format_migrating(self.migrating)
        return out


def slot_for(key: str, strategy: str, slots: int) -> int:
    """A key's slot: the route's strategy over S (the published vectors with count=S)."""
    return ordinal_for(key, strategy, slots)


def parse(annotations: Mapping[str, str], start: int = 0) -> SlotMap | None:
    """The slot map in a StatefulSet's annotations, or None when it is not in slot mode."""
    raw = annotations.get(SLOTS)
    if raw is None:
        for name in (ASSIGNMENT, MIGRATING):
            if annotations.get(name, "").strip():
                raise SlotError(name, annotations[name], f"it needs {SLOTS} to be set too")
        return None
    slots = parse_slots(raw)
    epoch = parse_epoch(annotations[EPOCH]) if EPOCH in annotations else 0
    text = annotations.get(ASSIGNMENT, "")
    assignment = parse_assignment(text, slots, start) if text.strip() else None
    value = annotations.get(MIGRATING, "")
    migrating = parse_migrating(value, slots)
    if migrating and assignment is None:
        raise SlotError(MIGRATING, value, f"slots are in flight but {ASSIGNMENT} is not set")
    for m in migrating:
        assert assignment is not None
        wrong = [s for s in m.slots() if assignment.owners[s] != m.source]
        if wrong:
            raise SlotError(MIGRATING, value,
                            f"slot {wrong[0]} moves from {m.source} but {ASSIGNMENT} gives it "
                            f"to {assignment.owners[wrong[0]]}")
    return SlotMap(slots, assignment, epoch, migrating)

