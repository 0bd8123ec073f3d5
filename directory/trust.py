"""The CA bundle the directory vouches for: what its clients should trust next.

A sidecar is injected with the CA bundle of its day. When the directory's CA is
rotated (``webhook.certs``: the next CA is staged, then promoted after an
overlap), the directory sends the bundle it now serves under (current CA, the
staged next one, the previous one while valid) over every stream, which the
sidecar verified with the CA it trusts already; the sidecar adds those CAs for
its next connections. So the chain of trust is: the injected CA, then the
bundle it vouches for. The bundle is public (CA certificates only), so
``GET /v1/trust`` serves it without a token.

``Trust`` re-reads the bundle's file (written by the certificate sync, or
cert-manager's in file mode) when its stat changes; a file that holds no
parseable certificate is ignored, and the last good bundle stays.
"""

from __future__ import annotations

import hashlib
import logging
import os

from cryptography import x509

log = logging.getLogger("shardmesh.directory.trust")


class Trust:
    def __init__(self, path: str) -> None:
        self.path = path
        #: The bundle, PEM ("" until one was read), and a short digest naming it.
        self.pem = ""
        self.version = ""
        self.stamp: tuple[int, int, int] | None = None

    def reload(self) -> bool:
        """Read the file if it changed; True when the bundle did."""
        if not self.path:
            return False
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == self.stamp:
                return False
            with open(self.path, "rb") as handle:
                data = handle.read()
        except OSError as err:
            log.warning("CA bundle %s unreadable: %s (sending the last one)", self.path, err)
            return False
        self.stamp = stamp
        try:
            cas = x509.load_pem_x509_certificates(data)
        except ValueError as err:
            log.warning("CA bundle %s holds no certificate: %s (sending the last one)",
                        self.path, err)
            return False
        pem = data.decode("ascii", "replace")
        if pem == self.pem:
            return False
        self.pem, self.version = pem, hashlib.sha256(data).hexdigest()[:16]
        log.info("CA bundle %s: %d CA(s), version %s", self.path, len(cas), self.version)
        return True

    def describe(self) -> dict[str, object]:
        return {"ca_bundle": self.pem, "version": self.version,
                "cas": self.pem.count("BEGIN CERTIFICATE")}
