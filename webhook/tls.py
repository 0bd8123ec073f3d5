"""A server TLS context that follows its certificate files, for hot reload.

``ReloadingContext.get`` answers with a cached context and, at most once per
``interval`` seconds, looks at the files' mtime and size; when they changed
it builds a new context. Existing connections keep the context they started
with; new ones get the new certificate, in every worker, without a restart.
A half-written pair (new certificate, old key) fails to load; the previous
context is kept and the next look tries again.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from typing import Any

from webhook.logs import event

Stamp = tuple[tuple[int, int], tuple[int, int]]


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS 1.2 or newer, server side, with the given certificate chain."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


class ReloadingContext:
    """The current ``SSLContext`` for a certificate and key file pair."""

    def __init__(self, cert_file: str, key_file: str, interval: float = 1.0) -> None:
        self.cert_file, self.key_file, self.interval = cert_file, key_file, interval
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        self._stamp: Stamp | None = None
        self._checked = 0.0

    def _stat(self) -> Stamp | None:
        try:
            c, k = os.stat(self.cert_file), os.stat(self.key_file)
        except FileNotFoundError:
            return None
        return (c.st_mtime_ns, c.st_size), (k.st_mtime_ns, k.st_size)

    def get(self) -> ssl.SSLContext:
        now = time.monotonic()
        if self._context is not None and now - self._checked < self.interval:
            return self._context
        with self._lock:
            self._checked = now
            stamp = self._stat()
            if stamp is not None and stamp != self._stamp:
                self._load(stamp)
        if self._context is None:
            raise ssl.SSLError(f"no usable certificate in {self.cert_file} and {self.key_file}")
        return self._context

    def _load(self, stamp: Stamp) -> None:
        try:
            self._context = server_context(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError) as err:
            event("certificate not loaded; keeping the previous one", logging.WARNING,
                  cert_file=self.cert_file, error=str(err))
            return
        first = self._stamp is None
        self._stamp = stamp
        event("certificate loaded" if first else "certificate reloaded", cert_file=self.cert_file)

    def loaded(self) -> bool:
        try:
            self.get()
        except ssl.SSLError:
            return False
        return True


class FollowingContext:
    """What gunicorn's ``ssl_context`` hook returns: an object with the one
    method servers use, ``wrap_socket``, that wraps with the current context.

    gunicorn's gthread worker asks the hook for every connection, but its
    gevent worker asks once and keeps the answer for the worker's life; a
    real ``SSLContext`` there would pin the first certificate forever.
    """

    def __init__(self, reloading: ReloadingContext) -> None:
        self.reloading = reloading

    def wrap_socket(self, sock: socket.socket, **kwargs: Any) -> ssl.SSLSocket:
        return self.reloading.get().wrap_socket(sock, **kwargs)
