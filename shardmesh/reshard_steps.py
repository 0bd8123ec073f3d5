"""What ``shardmesh reshard`` does next, decided from the annotations alone. Pure.

The command is a loop: read the StatefulSet, ``next_step``, do that one step
(a write with the resourceVersion just read, or a handoff), and read again. No
state is kept between steps but the annotations, so a run that was killed, or
a write that lost a race, resumes by reading: a batch in ``shard.io/migrating``
is finished at its published epoch (the same handoff epoch, then the flip).
"""

from __future__ import annotations

from dataclasses import dataclass

from shardmesh.reshard_plan import Move, plan
from sidecar.slots import (
    ASSIGNMENT,
    EPOCH,
    MIGRATING,
    Assignment,
    Migration,
    SlotMap,
    format_assignment,
    format_migrating,
    initial,
    migrations_for,
)


@dataclass(frozen=True)
class Refuse:
    """Stop with this message (exit non-zero)."""

    message: str


@dataclass(frozen=True)
class Done:
    epoch: int
    assignment: Assignment


@dataclass(frozen=True)
class Begin:
    """Publish ``move`` in ``shard.io/migrating`` at ``epoch`` (the current one + 1)."""

    move: Move
    epoch: int
    #: Batches left after this one (for progress output).
    remaining: int


@dataclass(frozen=True)
class Handoff:
    """One old owner's part of the batch in flight."""

    source: int
    target: int
    slots: tuple[int, ...]


@dataclass(frozen=True)
class Finish:
    """The batch in flight: hand each part off at ``epoch``, then flip to it."""

    handoffs: tuple[Handoff, ...]
    #: The epoch at which the new owners take over: the published one + 1.
    epoch: int


Step = Refuse | Done | Begin | Finish


def next_step(smap: SlotMap | None, start: int, n: int, batch: int) -> Step:
    if smap is None:
        return Refuse("it is not in slot mode: annotate it with shard.io/slots first")
    if smap.assignment is None:
        return Refuse(f"{ASSIGNMENT} is not set: run 'shardmesh reshard <statefulset> --init' "
                      "first")
    if smap.migrating:
        return Finish(in_flight(smap.migrating), smap.epoch + 1)
    moves = plan(smap.assignment, start, n, batch)
    if not moves:
        return Done(smap.epoch, smap.assignment)
    return Begin(moves[0], smap.epoch + 1, len(moves) - 1)


def in_flight(migrating: tuple[Migration, ...]) -> tuple[Handoff, ...]:
    """The migrating ranges grouped into one handoff per (from, to) pair."""
    pairs: dict[tuple[int, int], list[int]] = {}
    for m in migrating:
        pairs.setdefault((m.source, m.target), []).extend(m.slots())
    return tuple(Handoff(s, t, tuple(sorted(slots))) for (s, t), slots in sorted(pairs.items()))


# ---- the annotation writes each step makes (None removes an annotation) -------------------

Patch = dict[str, str | None]


def begin_patch(step: Begin) -> Patch:
    return {EPOCH: str(step.epoch),
            MIGRATING: format_migrating(migrations_for(step.move.slots, step.move.source,
                                                       step.move.target))}


def flip_patch(smap: SlotMap, step: Finish) -> Patch:
    assert smap.assignment is not None
    after = smap.assignment
    for h in step.handoffs:
        after = after.moved(h.slots, h.target)
    return {EPOCH: str(step.epoch), ASSIGNMENT: format_assignment(after), MIGRATING: None}


def init_step(smap: SlotMap | None, start: int, replicas: int) -> Refuse | Done | Patch:
    """``--init``: the first assignment over the current replicas, at epoch 1 (or the next
    epoch if one was already written: it only grows). Done when it is already there."""
    if smap is None:
        return Refuse("it is not in slot mode: annotate it with shard.io/slots "
                      "(1..65536) first")
    if replicas < 1:
        return Refuse(f"it has {replicas} replicas: scale it out first")
    first = initial(smap.slots, start, replicas)
    if smap.assignment is not None:
        if smap.assignment == first:
            return Done(smap.epoch, first)
        return Refuse(f"{ASSIGNMENT} is already '{format_assignment(smap.assignment)}' "
                      f"(epoch {smap.epoch}), not the initial '{format_assignment(first)}': "
                      "--init only writes the first assignment; use --to N to rebalance")
    return {ASSIGNMENT: format_assignment(first), EPOCH: str(max(1, smap.epoch + 1)),
            MIGRATING: None}


def pods_needed(step: Begin | Finish) -> list[int]:
    """Ordinals whose pods must be Ready for this step."""
    if isinstance(step, Begin):
        return [step.move.source, step.move.target]
    return sorted({o for h in step.handoffs for o in (h.source, h.target)})
