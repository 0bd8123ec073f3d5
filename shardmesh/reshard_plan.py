"""The reshard planner: balance S slots over ordinals start..start+N-1, moving the fewest. Pure.

Targets: each of the N ordinals gets floor(S/N) slots, and the lowest S mod N
ordinals one more. An ordinal over its target gives away exactly its excess
(every slot of an ordinal outside the range is excess); one under it receives
exactly its shortfall; every other slot stays where it is. So the number moved
is the minimum, sum over ordinals of max(0, have - target).

A donor gives its highest slots, so the ranges it keeps stay contiguous, and
receivers are filled lowest ordinal first. The plan is recomputed from the
current assignment before every batch (resumption needs no stored plan), and a
partly applied plan recomputes to the rest of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.slots import Assignment, format_slot_list

DEFAULT_BATCH = 8


@dataclass(frozen=True)
class Move:
    """One batch: ``slots`` (ascending) go from pod ordinal ``source`` to ``target``."""

    slots: tuple[int, ...]
    source: int
    target: int

    def __str__(self) -> str:
        return f"slots {format_slot_list(self.slots)} ({len(self.slots)}): " \
               f"{self.source} -> {self.target}"


def targets(slots: int, start: int, n: int) -> dict[int, int]:
    """Slots each ordinal start..start+n-1 should hold."""
    if n < 1 or start < 0 or slots < 1:
        raise ValueError(f"need slots >= 1, n >= 1 and start >= 0; "
                         f"got slots={slots}, n={n}, start={start}")
    base, extra = divmod(slots, n)
    return {start + i: base + (1 if i < extra else 0) for i in range(n)}


def excess(assignment: Assignment, start: int, n: int) -> int:
    """The fewest slots any balancing must move."""
    want = targets(assignment.slots, start, n)
    return sum(max(0, have - want.get(o, 0)) for o, have in assignment.counts().items())


def transfers(assignment: Assignment, start: int, n: int) -> list[tuple[int, int, int]]:
    """(slot, from, to) for every slot that must move, in plan order."""
    want = targets(assignment.slots, start, n)
    held = assignment.counts()
    given: list[tuple[int, int]] = []  # (slot, donor)
    for donor in sorted(held):
        surplus = held[donor] - want.get(donor, 0)
        if surplus > 0:
            mine = assignment.slots_of(donor)
            given += [(s, donor) for s in mine[len(mine) - surplus:]]
    receivers = [o for o in sorted(want) for _ in range(max(0, want[o] - held.get(o, 0)))]
    # Both lists have the same length: total slots are fixed, so the sum of surpluses
    # equals the sum of shortfalls.
    return [(slot, donor, to) for (slot, donor), to in zip(given, receivers, strict=True)]


def plan(assignment: Assignment, start: int, n: int, batch: int = DEFAULT_BATCH) -> list[Move]:
    """The batches (at most ``batch`` slots, one (from, to) pair each) that balance the map."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    pairs: dict[tuple[int, int], list[int]] = {}
    for slot, source, target in transfers(assignment, start, n):
        pairs.setdefault((source, target), []).append(slot)
    moves: list[Move] = []
    for (source, target), slots in sorted(pairs.items()):
        ordered = sorted(slots)
        moves += [Move(tuple(ordered[i:i + batch]), source, target)
                  for i in range(0, len(ordered), batch)]
    return moves


def apply(assignment: Assignment, moves: list[Move]) -> Assignment:
    for move in moves:
        assignment = assignment.moved(move.slots, move.target)
    return assignment
