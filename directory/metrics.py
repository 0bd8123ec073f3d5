"""The directory's Prometheus metrics, in a registry of its own (``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry()

SUBSCRIBERS = Gauge("shardmesh_directory_subscribers",
                    "Open subscription streams", registry=REGISTRY)
INFORMERS = Gauge("shardmesh_directory_informers",
                  "StatefulSets watched now (one list+watch of it and of its pods each)",
                  registry=REGISTRY)
INFORMER_STARTS = Counter("shardmesh_directory_informer_starts",
                          "Informers started (first subscriber or resolve)", registry=REGISTRY)
INFORMER_STOPS = Counter("shardmesh_directory_informer_stops",
                         "Informers stopped (their last subscriber left)", registry=REGISTRY)
LISTS = Counter("shardmesh_directory_lists",
                "Lists of the API: initial, or a relist after 410 Gone or a new selector",
                ["kind", "reason"], registry=REGISTRY)
API_EVENTS = Counter("shardmesh_directory_api_events",
                     "Watch events received from the API server", ["kind"], registry=REGISTRY)
WATCH_ERRORS = Counter("shardmesh_directory_watch_errors",
                       "Watches broken by an error (then resumed after a jittered backoff)",
                       ["kind", "reason"], registry=REGISTRY)
MAP_CHANGES = Counter("shardmesh_directory_map_changes",
                      "New map generations published", registry=REGISTRY)
FANOUT = Counter("shardmesh_directory_snapshots_sent",
                 "Snapshots written to subscribers (events fanned out)", registry=REGISTRY)
PROPAGATION = Histogram(
    "shardmesh_directory_propagation_seconds",
    "From the API event's arrival to the snapshot's write to each subscriber",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY)
REQUESTS = Counter("shardmesh_directory_requests", "HTTP requests by path and status",
                   ["path", "status"], registry=REGISTRY)
REVIEWS = Counter("shardmesh_directory_reviews",
                  "TokenReviews and SubjectAccessReviews sent to the API server (cache misses)",
                  ["kind", "result"], registry=REGISTRY)


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
