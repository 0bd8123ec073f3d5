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


def test_a_new_selector_drops_the_old_pods_and_silences_the_old_loop() -> None:
    from sidecar.annotations import parse_routes
    from sidecar.discovery import RouteWatch, Snapshot
    from sidecar.metrics import Stats
    from tests.sidecar.test_ordinals import pod, sts

    def selected(track: str) -> dict[str, object]:
        doc = sts(2)
        doc["spec"]["selector"] = {"matchLabels": {"app": "ledger", "track": track}}
        return doc

    published: list[Snapshot] = []
    watch = RouteWatch(parse_routes({"shard.io/backend": "ledger:8080"}, "shop")[0],
                       client=None, publish=published.append, stats=Stats())
    watch._replace("sts", [selected("v1")])
    assert (watch.selector, published) == ("app=ledger,track=v1", [])  # waits for the pods
    first_loop = watch.pod_loop
    old = lambda: watch.pod_loop == first_loop  # noqa: E731 - as _restart_pods_locked makes
    watch._replace("pods", [pod(f"ledger-{o}", str(o)) for o in (0, 1)], old)
    assert all(s.ready for s in published[-1].shards)

    watch._apply("sts", "MODIFIED", selected("v2"))
    assert watch.selector == "app=ledger,track=v2" and watch.pod_loop > first_loop
    assert watch.pods == {} and not watch.listed["pods"]
    count = len(published)
    watch._apply("pods", "MODIFIED", pod("ledger-0", "0"), old)  # the old loop: ignored
    assert watch.pods == {} and len(published) == count

    watch._apply("sts", "DELETED", selected("v2"))  # no StatefulSet: no pod watch at all
    assert watch.selector is None and watch.listed["pods"] and published[-1].count == 0
