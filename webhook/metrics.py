"""Prometheus metrics of the webhook.

With one gunicorn worker the default registry is exported as is. With
several (2 by default; see webhook/settings.py) gunicorn's processes each
count their own reviews, so ``webhook.cli`` sets ``PROMETHEUS_MULTIPROC_DIR``
before this module is imported and ``/metrics`` merges the per-process files.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

DECISIONS = Counter(
    "shardmesh_webhook_decisions_total",
    "Admission decisions by result (injected, skipped, rejected) and reason.",
    ["result", "reason", "dry_run"],
)
BAD_REVIEWS = Counter(
    "shardmesh_webhook_bad_reviews_total",
    "Reviews answered with an HTTP error, by status.",
    ["status"],
)
REVIEWS = Counter(
    "shardmesh_webhook_reviews_total",
    "Reviews received on /mutate, by the way they came in: 'lane' for the API "
    "server's plain form (webhook/mutate_lane.py), 'flask' for any other.",
    ["via"],
)
LATENCY = Histogram(
    "shardmesh_webhook_review_duration_seconds",
    "Time to answer one AdmissionReview, from body read to response encoded.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


def exposition() -> tuple[bytes, str]:
    """The text exposition of all counters (merged across workers when multiprocess)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
