"""Full-jitter backoff of the direct watches (sidecar.backoff), and the pod selector."""

from __future__ import annotations

import random

import pytest

from sidecar.backoff import ceiling, full_jitter
from sidecar.discovery import BACKOFF_MAX, BACKOFF_START, pod_selector


def test_the_window_doubles_up_to_the_cap() -> None:
    windows = [ceiling(n, 0.1, 5.0) for n in range(10)]
    assert windows[:6] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
    assert windows[6:] == [5.0] * 4
    assert ceiling(10_000, 0.1, 5.0) == 5.0  # no overflow however long the outage


def test_draws_span_the_whole_window_and_never_leave_it() -> None:
    rng = random.Random(7)
    for attempt in range(8):
        top = ceiling(attempt, BACKOFF_START, BACKOFF_MAX)
        draws = [full_jitter(attempt, BACKOFF_START, BACKOFF_MAX, rng.random)
                 for _ in range(2000)]
        assert all(0.0 <= d < top for d in draws)
        # full jitter, not "half plus jitter": the first and last tenths are both used
        assert min(draws) < top * 0.1 and max(draws) > top * 0.9
        assert sum(draws) / len(draws) == pytest.approx(top / 2, rel=0.1)


def test_the_extremes_of_the_random_source() -> None:
    assert full_jitter(3, 0.1, 5.0, lambda: 0.0) == 0.0
    assert full_jitter(3, 0.1, 5.0, lambda: 0.999) == pytest.approx(0.7992)


@pytest.mark.parametrize(("attempt", "base", "cap"), [(-1, 0.1, 5), (0, 0, 5), (0, 1, 0.5)])
def test_bad_parameters_are_named(attempt: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError, match=f"attempt={attempt} base={base}"):
        ceiling(attempt, base, cap)


def test_the_pod_selector_is_the_statefulsets_own() -> None:
    sts = {"spec": {"selector": {
        "matchLabels": {"app": "ledger"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}]}}}
    assert pod_selector(sts, "ledger") == "app=ledger,tier in (a,b)"
    assert pod_selector({"spec": {"selector": {}}}, "ledger") is None  # would select all
    assert pod_selector({"spec": {"selector": {"matchExpressions": [
        {"key": "x", "operator": "Bogus"}]}}}, "ledger") is None
