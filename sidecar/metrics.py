"""Prometheus metrics, cheap on the hot path.

The hot path only bumps plain ints in dicts and lists (no locks, no label
lookups); a custom collector turns them into Prometheus families at scrape
time. The event loop is single-threaded and the scrape runs on it too, so the
numbers are never read half-written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

#: Upper bounds of the latency histogram, in seconds.
BUCKETS: Final[tuple[float, ...]] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                     0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BUCKET_COUNT: Final = len(BUCKETS)


class RouteLatency:
    """One route's latency histogram: a count per bucket (and +Inf) and the sum."""

    def __init__(self) -> None:
        self.counts: list[int] = [0] * (_BUCKET_COUNT + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        i = 0
        while i < _BUCKET_COUNT and BUCKETS[i] < seconds:  # le: the first bound >= seconds
            i += 1
        self.counts[i] += 1
        self.total += seconds


class Slot:
    """One route and ordinal: its requests by status, and the route's histogram
    (shared by the route's ordinals)."""

    def __init__(self, latency: RouteLatency) -> None:
        self.by_status: dict[int, int] = {}
        self.latency = latency

    def observe(self, status: int, seconds: float) -> None:
        by_status = self.by_status
        by_status[status] = by_status.get(status, 0) + 1
        self.latency.observe(seconds)


class Stats:
    """Counters the proxy bumps; read by ``StatsCollector``.

    Plain ints in dicts, and a native loop over the buckets: a request is counted
    once (compiled, see setup.py). Each upstream pool keeps the ``Slot`` of its
    route and ordinal, so a proxied request is counted without looking it up.
    """

    def __init__(self) -> None:
        #: route -> ordinal (or "") -> its slot
        self.requests: dict[str, dict[str, Slot]] = {}
        self.latency: dict[str, RouteLatency] = {}
        self.upstream_connects: dict[tuple[str, str], int] = {}
        self.connect_failures: dict[tuple[str, str], int] = {}
        self.annotation_reloads: dict[str, int] = {"ok": 0, "error": 0}
        self.watch_restarts: dict[str, int] = {}
        # Slot mode: 421s by (route, ordinal); requests held by (route, reason:
        # migrating, unavailable, epoch); slot maps refused by (route, "").
        self.misdirected: dict[tuple[str, str], int] = {}
        self.slot_held: dict[tuple[str, str], int] = {}
        self.bad_slot_maps: dict[tuple[str, str], int] = {}

    def slot(self, route: str, ordinal: str) -> Slot:
        by_ordinal = self.requests.get(route)
        if by_ordinal is None:
            by_ordinal = self.requests[route] = {}
        slot = by_ordinal.get(ordinal)
        if slot is None:
            latency = self.latency.get(route)
            if latency is None:
                latency = self.latency[route] = RouteLatency()
            slot = by_ordinal[ordinal] = Slot(latency)
        return slot


def bump(counter: dict[tuple[str, str], int], route: str, ordinal: str) -> None:
    counter[(route, ordinal)] = counter.get((route, ordinal), 0) + 1


class StatsCollector(Collector):
    def __init__(self, stats: Stats, generation: Callable[[], int],
                 sync_ages: Callable[[], dict[str, float | None]],
                 epochs: Callable[[], dict[str, int]] | None = None) -> None:
        self.stats, self.generation, self.sync_ages = stats, generation, sync_ages
        #: route -> its slot map's epoch (slot-mode routes with a map only).
        self.epochs = epochs

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        s = self.stats
        requests = CounterMetricFamily("shardmesh_sidecar_requests", "Requests answered",
                                       labels=["route", "ordinal", "code"])
        for route, by_ordinal in s.requests.items():
            for ordinal, slot in by_ordinal.items():
                for status, n in slot.by_status.items():
                    requests.add_metric([route, ordinal, str(status)], n)
        yield requests
        latency = HistogramMetricFamily("shardmesh_sidecar_request_duration_seconds",
                                        "Time from request head to the end of the response",
                                        labels=["route"])
        for route, histogram in s.latency.items():
            cumulative, buckets = 0, []
            for bound, n in zip((*BUCKETS, float("inf")), histogram.counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([route], buckets, histogram.total)
        yield latency
        for name, doc, data in (
            ("shardmesh_sidecar_upstream_connections", "Upstream connections opened",
             s.upstream_connects),
            ("shardmesh_sidecar_upstream_connect_failures", "Upstream connects that failed",
             s.connect_failures),
        ):
            family = CounterMetricFamily(name, doc, labels=["route", "ordinal"])
            for (route, ordinal), n in data.items():
                family.add_metric([route, ordinal], n)
            yield family
        yield from self.collect_slots()
        reloads = CounterMetricFamily("shardmesh_sidecar_annotation_reloads",
                                      "Annotation file reloads", labels=["result"])
        for result, n in s.annotation_reloads.items():
            reloads.add_metric([result], n)
        yield reloads
        restarts = CounterMetricFamily("shardmesh_sidecar_watch_restarts",
                                       "Kubernetes watches restarted", labels=["reason"])
        for reason, n in s.watch_restarts.items():
            restarts.add_metric([reason], n)
        yield restarts
        yield GaugeMetricFamily("shardmesh_sidecar_shard_map_generation",
                                "Changes applied to the shard map", value=self.generation())
        ages = GaugeMetricFamily("shardmesh_sidecar_shard_map_sync_age_seconds",
                                 "Seconds since each route's map last changed from a sync",
                                 labels=["route"])
        for route, age in self.sync_ages().items():
            if age is not None:
                ages.add_metric([route], age)
        yield ages

    def collect_slots(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.stats
        for name, doc, label, data in (
            ("shardmesh_sidecar_misdirected", "421 answers (slot not owned); never relayed",
             "ordinal", s.misdirected),
            ("shardmesh_sidecar_slot_held", "Slot-mode requests held for a newer map",
             "reason", s.slot_held),
        ):
            family = CounterMetricFamily(name, doc, labels=["route", label])
            for (route, value), n in data.items():
                family.add_metric([route, value], n)
            yield family
        bad = CounterMetricFamily("shardmesh_sidecar_slot_map_refused",
                                  "Slot maps refused (invalid, or the epoch went back)",
                                  labels=["route"])
        for (route, _), n in s.bad_slot_maps.items():
            bad.add_metric([route], n)
        yield bad
        epochs = GaugeMetricFamily("shardmesh_sidecar_slot_map_epoch",
                                   "The epoch of each slot-mode route's map", labels=["route"])
        for route, epoch in (self.epochs() if self.epochs is not None else {}).items():
            epochs.add_metric([route], epoch)
        yield epochs


def registry_for(collector: StatsCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def now() -> float:
    return time.monotonic()
