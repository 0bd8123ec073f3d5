"""The planner (balanced, minimal, stable) and the pure resumable steps of ``shardmesh reshard``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shardmesh.reshard_plan import Move, apply, excess, plan, targets
from shardmesh.reshard_steps import (
    Begin,
    Done,
    Finish,
    Handoff,
    Refuse,
    begin_patch,
    flip_patch,
    init_step,
    next_step,
)
from sidecar import slots as sl


@st.composite
def cases(draw: st.DrawFn) -> tuple[sl.Assignment, int, int, int]:
    count = draw(st.integers(1, 200))
    start = draw(st.integers(0, 3))
    owners = draw(st.lists(st.integers(start, start + 7), min_size=count, max_size=count))
    return sl.Assignment.of(owners), start, draw(st.integers(1, 8)), draw(st.integers(1, 10))


@given(cases())
def test_plan_balances_with_the_fewest_moves(case: tuple[sl.Assignment, int, int, int]) -> None:
    a, start, n, batch = case
    moves = plan(a, start, n, batch)
    after = apply(a, moves)
    want = targets(a.slots, start, n)
    held = after.counts()
    assert {o: held.get(o, 0) for o in want} == want  # balanced, lowest ordinals get the extra
    assert set(held) <= set(want)
    moved = [s for m in moves for s in m.slots]
    assert len(moved) == len(set(moved)) == excess(a, start, n)  # minimal, each slot once
    assert all(after.owner(s) == a.owner(s) for s in range(a.slots) if s not in set(moved))
    for m in moves:
        assert 1 <= len(m.slots) <= batch and m.source != m.target
        assert all(a.owner(s) == m.source for s in m.slots)
    assert plan(after, start, n, batch) == []


@given(cases())
def test_a_partly_applied_plan_finishes_with_the_same_total(
        case: tuple[sl.Assignment, int, int, int]) -> None:
    a, start, n, batch = case
    moves = plan(a, start, n, batch)
    if not moves:
        return
    rest = plan(apply(a, moves[:1]), start, n, batch)
    assert sum(len(m.slots) for m in rest) == sum(len(m.slots) for m in moves[1:])


def test_three_to_four() -> None:
    a = sl.initial(64, 0, 3)  # 22, 21, 21
    moves = plan(a, 0, 4, 8)
    assert sum(len(m.slots) for m in moves) == 6 + 5 + 5
    assert [(m.source, m.target, len(m.slots)) for m in moves] == [
        (0, 3, 6), (1, 3, 5), (2, 3, 5)]
    assert moves[0].slots == (16, 17, 18, 19, 20, 21)  # a donor gives its highest slots
    assert sl.format_assignment(apply(a, moves)) == "0-15:0,16-21:3,22-37:1,38-42:3,43-58:2,59-63:3"


def _map(assignment: str, epoch: int, migrating: str = "") -> sl.SlotMap:
    smap = sl.parse({sl.SLOTS: "64", sl.ASSIGNMENT: assignment, sl.EPOCH: str(epoch),
                     sl.MIGRATING: migrating})
    assert smap is not None
    return smap


def test_next_step_walks_a_reshard_and_resumes_at_the_published_epoch() -> None:
    smap = _map("0-21:0,22-42:1,43-63:2", 1)
    step = next_step(smap, 0, 4, 8)
    assert step == Begin(Move((16, 17, 18, 19, 20, 21), 0, 3), 2, 2)
    assert isinstance(step, Begin)
    patch = begin_patch(step)
    assert patch == {sl.EPOCH: "2", sl.MIGRATING: "16-21:0>3"}
    # the run dies here; the next one reads the annotations only
    smap = _map("0-21:0,22-42:1,43-63:2", 2, "16-21:0>3")
    step2 = next_step(smap, 0, 4, 8)
    assert step2 == Finish((Handoff(0, 3, (16, 17, 18, 19, 20, 21)),), 3)
    assert next_step(smap, 0, 4, 8) == step2  # the same handoff epoch however often resumed
    assert isinstance(step2, Finish)
    flip = flip_patch(smap, step2)
    assert flip == {sl.EPOCH: "3", sl.ASSIGNMENT: "0-15:0,16-21:3,22-42:1,43-63:2",
                    sl.MIGRATING: None}


def test_in_flight_ranges_group_per_pair_even_when_another_plan_is_wanted() -> None:
    smap = _map("0-21:0,22-42:1,43-63:2", 7, "0-1:0>2,5:0>2,30:1>0")
    step = next_step(smap, 0, 2, 8)  # whatever --to says, the batch in flight finishes first
    assert step == Finish((Handoff(0, 2, (0, 1, 5)), Handoff(1, 0, (30,))), 8)


def test_done_and_refusals() -> None:
    assert isinstance(next_step(_map("0-31:0,32-63:1", 3), 0, 2, 8), Done)
    assert isinstance(next_step(None, 0, 2, 8), Refuse)
    refused = next_step(sl.SlotMap(64), 0, 2, 8)
    assert isinstance(refused, Refuse) and "--init" in refused.message


def test_init_step() -> None:
    assert init_step(sl.SlotMap(64), 0, 3) == {
        sl.ASSIGNMENT: "0-21:0,22-42:1,43-63:2", sl.EPOCH: "1", sl.MIGRATING: None}
    assert init_step(sl.SlotMap(64, epoch=5), 0, 3)[sl.EPOCH] == "6"  # type: ignore[index]
    assert isinstance(init_step(_map("0-21:0,22-42:1,43-63:2", 1), 0, 3), Done)
    refused = init_step(_map("0-31:0,32-63:1", 4), 0, 3)
    assert isinstance(refused, Refuse) and "already '0-31:0,32-63:1'" in refused.message
    assert isinstance(init_step(None, 0, 3), Refuse)
