"""The pod's annotations file (downward API), re-read when the kubelet swaps it.

The kubelet updates a downward-API volume by writing a new directory and
swapping a symlink, so inotify on the file misses it; polling a fingerprint
(inode, size, mtime of the resolved path) once a second catches every swap.
A file that does not parse keeps the routes that are running: the error is
logged with the annotation and value it names, and counted.
"""

from __future__ import annotations

import logging
import os

from sidecar.annotations import (
    AnnotationError,
    RouteSpec,
    discovery_for,
    max_connections,
    parse_routes,
)
from sidecar.downward import parse_downward_file

log = logging.getLogger("shardmesh.sidecar.reload")

Fingerprint = tuple[int, int, int, int]


class AnnotationsFile:
    def __init__(self, path: str, namespace: str) -> None:
        self.path, self.namespace = path, namespace
        self.fingerprint: Fingerprint | None = None
        #: The last error, for /readyz-style introspection and logs.
        self.error = ""
        #: ``shard.io/max-connections`` as of the last good read (None: unset).
        self.max_connections: int | None = None
        #: Route -> ``shard.io/discovery`` for it as of the last good read (None: unset).
        self.discovery: dict[str, str | None] = {}

    def _stat(self) -> Fingerprint | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def changed(self) -> bool:
        return self._stat() != self.fingerprint

    def read(self) -> tuple[RouteSpec, ...] | None:
        """The routes the file declares now, or None (logged) when it cannot be used."""
        self.fingerprint = self._stat()
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as err:
            self._fail(f"cannot read annotations file {self.path}: {err.strerror}")
            return None
        except UnicodeDecodeError:
            self._fail(f"annotations file {self.path} is not UTF-8")
            return None
        try:
            annotations = parse_downward_file(text)
            routes = parse_routes(annotations, self.namespace)
            self.max_connections = max_connections(annotations)
            self.discovery = {r.name: discovery_for(annotations, r.name) for r in routes}
        except AnnotationError as err:
            self._fail(f"annotations file {self.path}: {err}; keeping the current routes")
            return None
        except ValueError as err:
            self._fail(f"{err}; keeping the current routes")
            return None
        if self.error:
            log.info("annotations file %s is valid again", self.path)
        self.error = ""
        log.info("routes from %s: %s", self.path, ", ".join(r.name for r in routes) or "none")
        return routes

    def _fail(self, message: str) -> None:
        self.error = message
        log.error("%s", message)
        return None
