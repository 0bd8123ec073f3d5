"""Namespace labels and annotations from the API, cached briefly.

The AdmissionReview carries only the namespace's name, and the namespace's
``shard.io/inject`` decides for pods that say nothing. Namespace settings
change rarely and every pod of a rollout asks for the same namespace, so a
few seconds of caching saves an API round trip on almost every review.
"""

from __future__ import annotations

import threading
import time

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from webhook.errors import LookupFailed
from webhook.podview import Obj


class NamespaceCache:
    def __init__(self, api: client.ApiClient, ttl: float, timeout: float = 2.0) -> None:
        self.core = client.CoreV1Api(api)
        self.ttl, self.timeout = ttl, timeout
        self._cache: dict[str, tuple[float, Obj]] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> Obj:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(name)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        value = self._fetch(name)
        with self._lock:
            self._cache[name] = (now, value)
        return value

    def _fetch(self, name: str) -> Obj:
        try:
            ns = self.core.read_namespace(name, _request_timeout=self.timeout)
        except ApiException as err:
            if err.status == 404:
                return {}
            why = f"{err.status} {err.reason}"
            raise LookupFailed(f"cannot read namespace '{name}': {why}") from None
        except HTTPError as err:
            raise LookupFailed(f"cannot read namespace '{name}': {err}") from None
        meta = ns.metadata or client.V1ObjectMeta()
        return {"metadata": {"name": name, "labels": dict(meta.labels or {}),
                             "annotations": dict(meta.annotations or {})}}


def offline(_name: str) -> Obj:
    """For ``--offline``: every namespace has no labels and no annotations."""
    return {}
