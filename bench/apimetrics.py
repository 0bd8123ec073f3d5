"""The API server's own Prometheus metrics, read from ``/metrics`` for the discovery bench.

Parsing is pure (``parse``, ``total``); only ``scrape`` does I/O. Counters
restart at zero with the process, so a delta is only taken between two
scrapes of one API-server process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.cluster.controlplane import ControlPlane

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    """Every sample line of a Prometheus text exposition (comments skipped)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        try:
            number = float(value)
        except ValueError:
            continue
        samples.append(Sample(name, dict(_LABEL.findall(labels)), number))
    return samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels``."""
    return sum(s.value for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


def watches(samples: list[Sample]) -> float:
    """Watch requests open right now (the long-running-request gauge, every resource)."""
    return total(samples, "apiserver_longrunning_requests", verb="WATCH")


def lists(samples: list[Sample], resource: str) -> float:
    """LIST requests served for ``resource`` in a namespace (the sidecars' and informers')."""
    return total(samples, "apiserver_request_total", verb="LIST", resource=resource,
                 scope="namespace")


def requests(samples: list[Sample]) -> float:
    """Every request served (a watch counts once, when it ends)."""
    return total(samples, "apiserver_request_total")


def watch_events(samples: list[Sample]) -> float:
    """Events the API server has sent to watchers (one per watcher per change)."""
    return total(samples, "apiserver_watch_events_total")


def cpu_seconds(samples: list[Sample]) -> float:
    return total(samples, "process_cpu_seconds_total")


def rss_mb(samples: list[Sample]) -> float:
    return total(samples, "process_resident_memory_bytes") / 2**20


def quantile_bound(before: list[Sample], after: list[Sample], name: str, q: float
                   ) -> float | None:
    """The upper bound (``le``) of the histogram bucket that holds the q-quantile of what
    ``name`` observed between two scrapes; None if it observed nothing."""
    def buckets(samples: list[Sample]) -> dict[float, float]:
        return {float(s.labels["le"]): s.value for s in samples if s.name == name + "_bucket"}

    old, new = buckets(before), buckets(after)
    counts = sorted((le, new[le] - old.get(le, 0.0)) for le in new)
    if not counts or counts[-1][1] <= 0:
        return None
    return next(le for le, n in counts if n >= q * counts[-1][1])


def mean(before: list[Sample], after: list[Sample], name: str) -> float | None:
    """The mean of what histogram ``name`` observed between two scrapes."""
    count = total(after, name + "_count") - total(before, name + "_count")
    return None if count <= 0 else (total(after, name + "_sum") - total(before, name + "_sum")) \
        / count


def scrape(cp: ControlPlane) -> list[Sample]:
    return parse(cp.kubectl("get", "--raw", "/metrics").stdout)
