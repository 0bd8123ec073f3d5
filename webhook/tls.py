"""A server TLS context that follows its certificate files, for hot reload.

``ReloadingContext.get`` answers with a cached context and, at most once per
``interval`` seconds, looks at the files' mtime and size; when they changed
it builds a new context. Existing connections keep the context they started
with; new ones get the new certificate, in every worker, without a restart.
A half-written pair (new certificate, old key) fails to load; the previous
context is kept and the next look tries again.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from typing import Any

from sidecar.annotations import clip
from webhook.logs import Throttle, event

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

    The handshake is never left to the caller, which would wait for it without
    a limit. With ``handshake_timeout`` (the gthread worker, whose thread
    would wait) it is done here, within that time; without it, not at all:
    the gevent worker (``webhook.worker``) does it, bounded.
    """

    def __init__(self, reloading: ReloadingContext, handshake_timeout: float | None = None,
                 log: Throttle | None = None) -> None:
        self.reloading, self.handshake_timeout = reloading, handshake_timeout
        self.log = log or Throttle()

    def wrap_socket(self, sock: socket.socket, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["do_handshake_on_connect"] = False
        wrapped = self.reloading.get().wrap_socket(sock, **kwargs)
        if self.handshake_timeout is not None:
            try:
                handshake_within(wrapped, self.handshake_timeout)
            except OSError as err:  # ssl.SSLError and TimeoutError are ones
                reason = "timeout" if isinstance(err, TimeoutError) else abort_reason(err)
                self.log.event(f"handshake {reason}", "TLS handshake aborted", logging.WARNING,
                               reason=reason, error=clip(str(err)))
                wrapped.close()
                # The one error gunicorn's gthread worker closes quietly, without
                # its own traceback: the line above said what happened.
                raise ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "TLS handshake aborted") from None
        return wrapped


def handshake_within(sock: ssl.SSLSocket, timeout: float) -> None:
    """Complete ``sock``'s server handshake within ``timeout`` seconds in all, or
    raise ``TimeoutError`` (a socket timeout bounds each read, not their sum, so
    a ClientHello sent a byte at a time would pass it)."""
    deadline = time.monotonic() + timeout
    previous = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                wanted = selectors.EVENT_READ
            except ssl.SSLWantWriteError:
                wanted = selectors.EVENT_WRITE
            left = deadline - time.monotonic()
            with selectors.DefaultSelector() as selector:
                selector.register(sock, wanted)
                if left <= 0 or not selector.select(left):
                    raise TimeoutError(f"no handshake within {timeout:g}s")
    finally:
        sock.settimeout(previous)


def abort_reason(err: BaseException) -> str:
    """The ``reason`` logged for a handshake that failed with ``err``."""
    if isinstance(err, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError, EOFError)):
        return "closed"
    if isinstance(err, ssl.SSLError):
        return "tls_error"
    if isinstance(err, OSError) and err.errno in (errno.ENOTCONN, errno.EBADF):
        return "closed"
    return "error"
