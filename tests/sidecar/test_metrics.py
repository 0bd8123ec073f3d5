"""The hot-path counters and what a scrape makes of them."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from sidecar.metrics import BUCKETS, Stats, StatsCollector, exposition, registry_for
from tests.sidecar.harness import SidecarThread, get_json


@given(st.floats(min_value=0, max_value=100, allow_nan=False))
def test_a_latency_lands_in_the_first_bucket_that_holds_it(seconds: float) -> None:
    stats = Stats()
    stats.slot("r", "0").observe(200, seconds)
    counts = stats.latency["r"].counts
    assert counts.index(1) == bisect_left(BUCKETS, seconds)  # "le": bound >= seconds
    assert sum(counts) == 1 and stats.latency["r"].total == seconds


def test_a_scrape_reports_every_count_once() -> None:
    stats = Stats()
    for ordinal, status, seconds in (("0", 200, 0.0004), ("0", 200, 0.002), ("1", 503, 0.0005),
                                     ("", 404, 40.0)):
        stats.slot("ledger", ordinal).observe(status, seconds)
    text = exposition(registry_for(StatsCollector(stats, lambda: 3, lambda: {}))).decode()
    assert 'shardmesh_sidecar_requests_total{code="200",ordinal="0",route="ledger"} 2.0' in text
    assert 'shardmesh_sidecar_requests_total{code="503",ordinal="1",route="ledger"} 1.0' in text
    assert 'shardmesh_sidecar_requests_total{code="404",ordinal="",route="ledger"} 1.0' in text
    bucket = "shardmesh_sidecar_request_duration_seconds_bucket"
    assert f'{bucket}{{le="0.0005",route="ledger"}} 2.0' in text  # 0.0004 and 0.0005
    assert f'{bucket}{{le="0.0025",route="ledger"}} 3.0' in text
    assert f'{bucket}{{le="30.0",route="ledger"}} 3.0' in text
    assert f'{bucket}{{le="+Inf",route="ledger"}} 4.0' in text
    assert 'shardmesh_sidecar_request_duration_seconds_count{route="ledger"} 4.0' in text


def test_request_latency_is_timed_finer_than_milliseconds(sidecar: SidecarThread) -> None:
    """The clock is not uvloop's loop.time(), kept in whole milliseconds: with it every
    duration, and so their sum, would be a multiple of 1 ms."""
    for i in range(20):
        status, _, _ = get_json(sidecar.port, "/svc/x", {"X-Shard-Key": str(i)})
        assert status == 200
    total = sidecar.sidecar.stats.latency["svc"].total
    assert total > 0
    assert abs(total * 1000 - round(total * 1000)) > 1e-6, total
