"""The end-to-end invariants catch what they claim to catch."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.shardfn import Strategy, ordinal_for
from tests.e2e.traffic import Answer
from tests.e2e.verdicts import Holding, answer_violations, epoch_violations, moved

STS, N = "svc", 3
STRATEGY: Strategy = "jump"
ACCOUNTS = [str(n) for n in range(20)]


def owner(account: str, count: int = N) -> int:
    return ordinal_for(account, STRATEGY, count)


def ok(account: str, ordinal: int | None = None) -> Answer:
    o = owner(account) if ordinal is None else ordinal
    return Answer(account, 200, str(o), None, {"replica": f"{STS}-{o}", "count": 1})


def unavailable(account: str, retry_after: str | None = "1") -> Answer:
    return Answer(account, 503, None, retry_after, {"error": "shard_unavailable"})


def good_holdings(accounts: list[str]) -> list[Holding]:
    held: dict[int, dict[str, int]] = {}
    for a in accounts:
        held.setdefault(owner(a), {})[a] = 1
    return [Holding(f"{STS}-{o}", c) for o, c in held.items()]


def test_a_clean_epoch_has_no_violations() -> None:
    answers = [ok(a) for a in ACCOUNTS]
    assert answer_violations(answers, STS, STRATEGY, N) == []
    assert epoch_violations(good_holdings(ACCOUNTS), answers, STS, STRATEGY, N) == []


def test_with_ordinals_start_the_owner_is_the_pod_start_plus_i() -> None:
    # ordinals.start = 1: shard i is pod svc-(1+i); the same answers under start 0 are wrong.
    answers = [ok(a, 1 + owner(a)) for a in ACCOUNTS]
    held: dict[int, dict[str, int]] = {}
    for a in ACCOUNTS:
        held.setdefault(1 + owner(a), {})[a] = 1
    holdings = [Holding(f"{STS}-{o}", c) for o, c in held.items()]
    assert answer_violations(answers, STS, STRATEGY, N, start=1) == []
    assert epoch_violations(holdings, answers, STS, STRATEGY, N, start=1) == []
    assert len(answer_violations(answers, STS, STRATEGY, N)) == len(ACCOUNTS)
    assert len(epoch_violations(holdings, answers, STS, STRATEGY, N)) == len(ACCOUNTS)


@pytest.mark.parametrize(("answer", "needle"), [
    pytest.param(Answer("5", 409, "0", None, {"error": "not_my_shard"}), "409", id="conflict"),
    pytest.param(Answer("5", 502, None, None, {"error": "upstream_error"}), "got 502",
                 id="upstream-error"),
    pytest.param(ok("5", (owner("5") + 1) % N), "X-Shard-Ordinal", id="wrong-replica"),
    pytest.param(unavailable("5"), "got 503", id="503-while-up"),
])
def test_bad_answers_are_reported(answer: Answer, needle: str) -> None:
    found = answer_violations([answer], STS, STRATEGY, N)
    assert len(found) == 1 and needle in found[0], found


@pytest.mark.parametrize(("answer", "violations"), [
    pytest.param(unavailable("5"), 0, id="503-with-retry-after"),
    pytest.param(unavailable("5", retry_after=None), 1, id="503-without-retry-after"),
    pytest.param(ok("5"), 1, id="200-from-a-down-owner"),
])
def test_down_owner_must_answer_503(answer: Answer, violations: int) -> None:
    down = frozenset({owner("5")})
    assert len(answer_violations([answer], STS, STRATEGY, N, down)) == violations


@pytest.mark.parametrize(("holdings", "needle"), [
    pytest.param(lambda h: [*h, Holding(f"{STS}-{(owner('3') + 1) % N}", {"3": 1})],
                 "found on", id="two-homes"),
    pytest.param(lambda h: [Holding(x.replica, {k: v for k, v in x.counters.items() if k != "3"})
                            for x in h], "found on []", id="no-home"),
    pytest.param(lambda h: [Holding(x.replica, {k: 2 if k == "3" else v
                                                for k, v in x.counters.items()}) for x in h],
                 "counted 2", id="double-deposit"),
    pytest.param(lambda h: [*h, Holding(f"{STS}-0", {"999": 1})], "no deposit", id="stray"),
])
def test_epoch_violations(holdings: Any, needle: str) -> None:
    answers = [ok(a) for a in ACCOUNTS]
    found = epoch_violations(holdings(good_holdings(ACCOUNTS)), answers, STS, STRATEGY, N)
    assert len(found) == 1 and needle in found[0], found


def test_moved_counts_owner_changes() -> None:
    assert moved(ACCOUNTS, STRATEGY, 3, 3) == 0
    assert moved(ACCOUNTS, STRATEGY, 3, 4) == sum(owner(a, 3) != owner(a, 4) for a in ACCOUNTS)
