"""The directory's settings: one object, from flags, then ``SHARDMESH_<FIELD>``, then defaults
(``webhook.settings_loader``, as the webhook's)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from webhook import settings_loader as loader
from webhook.settings_loader import flag as _flag


@dataclass(frozen=True)
class Settings:
    """How the directory serves, authorises and manages its certificate."""

    #: The namespace the directory (and the injector) runs in: its Secret lives there.
    injector_namespace: str = "shardmesh-system"
    #: Address and port of the HTTPS listener.
    host: str = "0.0.0.0"
    port: int = 8443
    #: "self": generate and rotate a CA and serving certificate kept in ``secret_name``;
    #: "file": read ``cert_file``/``key_file`` (for cert-manager) and reload them on change.
    cert_mode: str = "self"
    #: File mode: the serving certificate (chain), PEM.
    cert_file: str = ""
    #: File mode: the serving certificate's private key, PEM.
    key_file: str = ""
    #: Where self-managed mode writes the serving certificate for the TLS layer.
    cert_dir: str = "/tmp/shardmesh-directory"
    #: The Secret (in ``injector_namespace``) shared by all replicas.
    secret_name: str = "shardmesh-directory-certs"
    #: The Service in front of the directory: its DNS names go into the certificate.
    service_name: str = "shardmesh-directory"
    #: Extra subject alternative names (DNS names or IP addresses).
    extra_sans: tuple[str, ...] = ()
    #: Lifetime of the serving certificate and of the CA, in seconds (renewed with 1/3 left).
    cert_lifetime_s: float = 90 * 86400.0
    ca_lifetime_s: float = 3 * 365 * 86400.0
    #: Seconds between staging the next CA (sent to every sidecar as trusted) and signing
    #: with it. Running sidecars learn the new CA over their streams, so the overlap must
    #: cover the longest a sidecar may stay disconnected and still be expected to follow
    #: the rotation (a directory outage); 30 days does, and costs nothing, as the CA is
    #: renewed with a year left. Sidecars away for longer report the CA mismatch.
    ca_overlap_s: float = 30 * 86400.0
    #: File mode: the CA bundle (PEM) sent to sidecars so that they follow a CA rotation
    #: (e.g. cert-manager's ca.crt); empty: none is sent. Self mode sends its own.
    ca_file: str = ""
    #: How often to look at the Secret and the certificate files.
    cert_check_s: float = 60.0
    #: Kubeconfig for running outside a cluster; empty means in-cluster.
    kubeconfig: str = ""
    #: Seconds between heartbeat lines on an idle subscription stream.
    heartbeat_s: float = 10.0
    #: Seconds an informer keeps running after its last subscriber left.
    linger_s: float = 30.0
    #: Seconds a token's review and a granted access are cached.
    auth_cache_s: float = 30.0
    #: Seconds a rejected token or a denied access is cached.
    deny_cache_s: float = 5.0
    #: Entries in each of the two review caches (least recently used go first).
    auth_cache_size: int = 4096
    #: Seconds a resolve waits for a StatefulSet's first map.
    resolve_wait_s: float = 5.0
    #: Streams beyond this many are refused with 503.
    max_subscribers: int = 20000
    #: Seconds a TLS handshake, a request head, or a write to a stream may take.
    handshake_timeout_s: float = 5.0
    request_timeout_s: float = 10.0
    write_timeout_s: float = 30.0
    #: debug, info, warning or error.
    log_level: str = "info"

    @property
    def webhook_config_name(self) -> str:
        """No webhook configuration to patch (``webhook.certstore`` skips it when empty)."""
        return ""

    def validate(self) -> Settings:
        if self.cert_mode not in ("self", "file"):
            raise ValueError(f"invalid cert mode '{self.cert_mode}': expected 'self' or 'file'")
        if self.cert_mode == "file" and not (self.cert_file and self.key_file):
            raise ValueError("cert mode 'file' needs --cert-file and --key-file")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"invalid port {self.port}: expected 1..65535")
        for name in ("heartbeat_s", "handshake_timeout_s", "request_timeout_s",
                     "write_timeout_s", "resolve_wait_s", "cert_check_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{_flag(name)} must be more than 0, got {getattr(self, name)}")
        for name in ("linger_s", "auth_cache_s", "deny_cache_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{_flag(name)} must be 0 or more, got {getattr(self, name)}")
        if not 0 <= self.ca_overlap_s < self.ca_lifetime_s / 3:
            raise ValueError(f"--ca-overlap-s is {self.ca_overlap_s:g}: expected 0 or more and "
                             f"under a third of --ca-lifetime-s ({self.ca_lifetime_s:g}), the "
                             "CA's lifetime left when its successor is made")
        if self.auth_cache_size < 1 or self.max_subscribers < 1:
            raise ValueError("--auth-cache-size and --max-subscribers must be at least 1")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"invalid log level '{self.log_level}'")
        return self


def parser() -> argparse.ArgumentParser:
    return loader.parser(
        Settings, "shardmesh directory",
        "Serve shard maps to sidecars: one watch per StatefulSet for the cluster.",
        "SHARDMESH_HEARTBEAT_S")


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    return loader.load(Settings, parser(), argv, environ, strip=True)
