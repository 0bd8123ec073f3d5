"""What the webhook tells sidecars about the directory: its URL and the CA that signed it.

The CA reaches the webhook as a file: the ``ca-bundle.crt`` item of the
directory's Secret, mounted into the webhook's pod (``optional``, so the
webhook starts before the directory has made it; the kubelet fills the file
in later and on rotation). ``DirectoryCA`` re-reads it when its stat changes,
at most every ``CHECK_S``; ``with_directory`` gives the settings an admission
uses: with the CA while there is one, else without the directory at all
(sidecars then watch the API server, which needs the same RBAC). The CA goes
into the sidecar as an environment variable, so no namespace needs a
ConfigMap or anything else of ours.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time

from webhook.settings import Settings

log = logging.getLogger("shardmesh.webhook.directory")

CHECK_S = 5.0
PEM_MARK = "-----BEGIN CERTIFICATE-----"


def usable_ca(text: str) -> str:
    """``text`` if it holds a PEM certificate, else ""."""
    return text if PEM_MARK in text else ""


@functools.lru_cache(maxsize=8)
def with_directory(settings: Settings, ca: str) -> Settings:
    """The settings an admission uses: the directory only when its CA is known. Memoised,
    so the rendered sidecar (cached by settings) is not rebuilt per review."""
    if not settings.directory_url or not usable_ca(ca):
        return dataclasses.replace(settings, directory_url="", directory_ca="")
    return dataclasses.replace(settings, directory_ca=ca)


class DirectoryCA:
    """The CA bundle file, re-read when it changes (cheap to ask on every review)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.checked = float("-inf")
        self.stamp: tuple[int, int, int] | None = None
        self.text = ""

    def current(self) -> str:
        now = time.monotonic()
        if now - self.checked < CHECK_S:
            return self.text
        with self.lock:
            self.checked = now
            try:
                st = os.stat(self.path)
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
                if stamp != self.stamp:
                    with open(self.path, encoding="ascii") as handle:
                        text = usable_ca(handle.read())
                    if text != self.text:
                        log.info("directory CA %s: %s", self.path,
                                 "loaded" if text else "holds no certificate")
                    self.stamp, self.text = stamp, text
            except (OSError, UnicodeDecodeError) as err:
                if self.text or self.stamp is not None:
                    log.warning("directory CA %s unreadable (%s): sidecars get no directory",
                                self.path, err)
                self.stamp, self.text = None, ""
        return self.text


def settings_for(settings: Settings, ca_file: DirectoryCA | None) -> Settings:
    """The settings of one admission (the edge: reads the CA file if there is one)."""
    if not settings.directory_url:
        return settings
    ca = ca_file.current() if ca_file is not None else settings.directory_ca
    return with_directory(settings, ca)
