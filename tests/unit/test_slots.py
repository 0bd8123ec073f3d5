"""The slot-map model: parse/format round trips, exact coverage, and errors that name things."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardmesh.reshard_lease import Lease, parse_lease, verdict
from sidecar import slot_routing as sr
from sidecar import slots as sl
from sidecar.shardfn import ordinal_for

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "shard_vectors.json"


@st.composite
def assignments(draw: st.DrawFn) -> sl.Assignment:
    count = draw(st.integers(1, 300))
    start = draw(st.integers(0, 5))
    owners = draw(st.lists(st.integers(start, start + 6), min_size=count, max_size=count))
    return sl.Assignment.of(owners)


@given(assignments())
def test_assignment_round_trips(a: sl.Assignment) -> None:
    text = sl.format_assignment(a)
    assert sl.parse_assignment(text, a.slots) == a
    # canonical: adjacent ranges never share an owner, so there is one text per map
    runs = list(sl.compact(a.owners))
    assert all(x[2] != y[2] for x, y in zip(runs, runs[1:], strict=False))


@given(assignments())
def test_every_slot_exactly_once(a: sl.Assignment) -> None:
    covered = [s for lo, hi, _ in sl.compact(a.owners) for s in range(lo, hi + 1)]
    assert covered == list(range(a.slots))
    assert sum(a.counts().values()) == a.slots


@given(st.text(max_size=60), st.integers(1, 100))
def test_parse_never_raises_anything_but_slot_error(text: str, slots: int) -> None:
    for parse in (lambda: sl.parse_assignment(text, slots), lambda: sl.parse_migrating(text, slots),
                  lambda: sl.parse_slots(text), lambda: sl.parse_epoch(text),
                  lambda: parse_lease(text),
                  lambda: sl.parse({sl.SLOTS: str(slots), sl.ASSIGNMENT: text,
                                    sl.MIGRATING: text})):
        try:
            parse()
        except sl.SlotError as err:
            assert "for annotation 'shard.io/" in str(err)


@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(0, 4),
                          st.integers(0, 4)), max_size=5), st.integers(10, 40))
def test_migrating_round_trips_when_valid(items: list[tuple[int, int, int, int]],
                                          slots: int) -> None:
    text = ",".join(f"{min(a, b)}-{max(a, b)}:{f}>{t}" for a, b, f, t in items)
    try:
        parsed = sl.parse_migrating(text, slots)
    except sl.SlotError:
        return
    assert sl.parse_migrating(sl.format_migrating(parsed), slots) == parsed


@pytest.mark.parametrize(("value", "why"), [
    ("0-21:0,22-42:1", "21 of 64 slots have no owner (43-63)"),
    ("0-40:0,30-63:1", "slot 30 is assigned twice (to 0 and 1)"),
    ("0-64:0", "goes past the last slot 63"),
    ("5-2:0,0-63:1", "range 5-2 runs backwards"),
    ("0-63", "is not <range>:<ordinal>"),
    ("0-63:-1", "ordinal '-1' is not an integer"),
    ("0-63:x", "ordinal 'x' is not an integer"),
    ("a-b:0", "'a-b' is not a slot range"),
    ("0-63:١", "ordinal '١' is not an integer"),
])
def test_assignment_errors_say_why(value: str, why: str) -> None:
    with pytest.raises(sl.SlotError) as err:
        sl.parse_assignment(value, 64)
    assert why in str(err.value)
    assert f"invalid value '{value}' for annotation 'shard.io/assignment'" in str(err.value)


def test_long_values_are_truncated_in_errors() -> None:
    value = ",".join(f"{s}:0" for s in range(2000)) + ",x"
    with pytest.raises(sl.SlotError) as err:
        sl.parse_assignment(value, 3000)
    assert len(str(err.value)) < 300 and "chars)" in str(err.value)


def test_ordinals_below_start_are_refused() -> None:
    with pytest.raises(sl.SlotError, match="below spec.ordinals.start 1"):
        sl.parse_assignment("0-3:0,4-7:1", 8, start=1)


@pytest.mark.parametrize("value", ["0", "65537", "-1", "1e3", " ", "x", "99999999999999999999"])
def test_bad_slot_counts(value: str) -> None:
    with pytest.raises(sl.SlotError, match="shard.io/slots"):
        sl.parse_slots(value)


def test_slot_counts_and_epochs() -> None:
    assert sl.parse_slots("1") == 1 and sl.parse_slots("65536") == 65536
    assert sl.parse_epoch("0") == 0 and sl.parse_epoch(" 17 ") == 17
    with pytest.raises(sl.SlotError, match="shard.io/epoch"):
        sl.parse_epoch("-1")


def test_migrating_errors() -> None:
    for value, why in [("0-7:0>0", "to their own owner"),
                       ("0-7:0>3,7:1>2", "slot 7 is in flight twice"),
                       ("0-7:0-3", "is not <range>:<from>><to>"),
                       ("0-99:0>1", "past the last slot")]:
        with pytest.raises(sl.SlotError, match=why):
            sl.parse_migrating(value, 64)


def test_parse_the_whole_map() -> None:
    smap = sl.parse({sl.SLOTS: "64", sl.ASSIGNMENT: "0-21:0,22-42:1,43-63:2",
                     sl.EPOCH: "4", sl.MIGRATING: "0-7:0>3"})
    assert smap is not None and smap.epoch == 4 and smap.owner(22) == 1
    assert smap.in_flight[7] == sl.Migration(0, 7, 0, 3) and 8 not in smap.in_flight
    assert sl.parse(smap.annotations()) == smap
    assert sl.parse({}) is None
    assert sl.parse({sl.SLOTS: "8"}) == sl.SlotMap(8)  # slot mode, not initialised yet
    with pytest.raises(sl.SlotError, match="slot 22 moves from 0 but shard.io/assignment gives "
                                           "it to 1"):
        sl.parse({sl.SLOTS: "64", sl.ASSIGNMENT: "0-21:0,22-42:1,43-63:2",
                  sl.MIGRATING: "20-23:0>3"})
    with pytest.raises(sl.SlotError, match="needs shard.io/slots"):
        sl.parse({sl.ASSIGNMENT: "0-7:0"})
    with pytest.raises(sl.SlotError, match="shard.io/assignment is not set"):
        sl.parse({sl.SLOTS: "8", sl.MIGRATING: "0:0>1"})


@given(st.integers(1, 2000), st.integers(0, 3), st.integers(1, 40))
def test_initial_assignment(slots: int, start: int, n: int) -> None:
    a = sl.initial(slots, start, n)
    assert [a.owner(s) for s in range(slots)] == [start + s * n // slots for s in range(slots)]
    counts = a.counts()
    if slots >= n:  # balanced within one, every ordinal used
        assert sorted(counts) == list(range(start, start + n))
        assert max(counts.values()) - min(counts.values()) <= 1


def test_initial_example_from_the_spec() -> None:
    assert sl.format_assignment(sl.initial(64, 0, 3)) == "0-21:0,22-42:1,43-63:2"
    assert sl.format_assignment(sl.initial(4, 1, 3)) == "0-1:1,2:2,3:3"


def test_key_to_slot_is_the_published_function() -> None:
    vectors = json.loads(VECTORS.read_text())["vectors"]
    for v in vectors:
        assert sl.slot_for(v["key"], v["strategy"], v["count"]) == v["ordinal"]
    assert sl.slot_for("7", "modulo", 64) == ordinal_for("7", "modulo", 64) == 7


def test_outside_counts_slots_of_scaled_away_ordinals() -> None:
    a = sl.parse_assignment("0-3:0,4-5:1,6-7:5", 8)
    assert a.outside(0, 2) == {5: 2}


def test_lease() -> None:
    lease = parse_lease("holder=alice@box/1/ab,expires=2026-05-01T12:00:30Z")
    assert lease.holder == "alice@box/1/ab" and parse_lease(str(lease)) == lease
    assert verdict(None, "me", 0) == "free"
    assert verdict(lease, "alice@box/1/ab", 0) == "mine"
    assert verdict(lease, "bob", lease.expires - 1) == "held"
    assert verdict(lease, "bob", lease.expires) == "expired"
    for bad, why in [("holder=a", "expected holder"), ("holder=a b,expires=2026-01-01T00:00:00Z",
                                                      "holder 'a b'"),
                     ("holder=a,expires=tomorrow", "not an RFC 3339"),
                     ("holder=a,expires=2026-01-01T00:00:00", "no time zone")]:
        with pytest.raises(sl.SlotError, match=why):
            parse_lease(bad)
    assert isinstance(lease, Lease)


def test_data_plane_helpers() -> None:
    smap = sl.parse({sl.SLOTS: "64", sl.ASSIGNMENT: "0-21:0,22-42:1,43-63:2", sl.EPOCH: "2",
                     sl.MIGRATING: "16-21:0>3"})
    assert smap is not None
    assert sr.route(smap, "17", "modulo") == sr.SlotRoute(17, 0, sl.Migration(16, 21, 0, 3))
    assert sr.route(smap, "30", "modulo") == sr.SlotRoute(30, 1, None)
    assert sr.route(sl.SlotMap(64), "30", "modulo") == sr.SlotRoute(30, None, None)
    assert sr.fencing_headers(smap, 30, 1) == (
        b"X-Shard-Slot: 30\r\nX-Shard-Slots: 64\r\nX-Shard-Epoch: 2\r\nX-Shard-Ordinal: 1\r\n")
    assert sr.refused_epoch(b"7") == 7 and sr.refused_epoch("x") is None
    assert sr.refused_epoch(None) is None
    flipped = sl.parse({sl.SLOTS: "64", sl.ASSIGNMENT: "0-15:0,16-21:3,22-42:1,43-63:2",
                        sl.EPOCH: "3"})
    assert flipped is not None
    assert sr.supersedes(smap, flipped) == "" and sr.supersedes(None, smap) == ""
    assert "went back from 3 to 2" in sr.supersedes(flipped, smap)
    assert "S is fixed" in sr.supersedes(smap, sl.SlotMap(32, epoch=9))
    assert "stayed at 3" in sr.supersedes(flipped, sl.SlotMap(64, flipped.assignment, 3,
                                                             smap.migrating))
