"""The webhook's settings: one dataclass, read from flags and environment here only.

Every field can be set by a flag (``--sidecar-image``) or by an environment
variable (``SHARDMESH_SIDECAR_IMAGE``); the flag wins. Nothing else in the
webhook reads ``os.environ``. The pure injection pipeline takes this object
as an argument, so the offline ``shardmesh inject`` builds one too.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sidecar import __version__
from webhook import settings_loader as loader
from webhook.settings_loader import flag as _flag

CertMode = Literal["self", "file"]
#: Native sidecars (restartable init containers) are on by default from 1.29.
NATIVE_SIDECAR_SINCE = (1, 29)
#: --worker-class value -> the gunicorn worker class (see webhook/worker.py).
WORKER_CLASSES = {"gevent": "webhook.worker.FairGeventWorker", "gthread": "gthread"}
_VERSION = re.compile(r"v?(\d+)\.(\d+)")


@dataclass(frozen=True)
class Settings:
    """How the webhook injects, serves and manages its certificates."""

    #: The image of the injected shard-router container.
    sidecar_image: str = f"ghcr.io/shardmesh/shardmesh:{__version__}"
    #: The namespace the injector runs in; its pods are never injected.
    injector_namespace: str = "shardmesh-system"
    #: "major.minor" of the cluster; None means "assume native sidecars".
    #: The server fills it from the API at start-up unless it is given.
    kube_version: str | None = None
    #: "self": generate and rotate the CA and serving certificate; "file": read
    #: ``cert_file``/``key_file`` (for cert-manager) and reload them on change.
    cert_mode: CertMode = "self"
    #: File mode: the serving certificate (chain), PEM.
    cert_file: str = ""
    #: File mode: the serving certificate's private key, PEM.
    key_file: str = ""
    #: Where self-managed mode writes the serving certificate for the TLS layer.
    cert_dir: str = "/tmp/shardmesh-webhook"
    #: The Secret (in ``injector_namespace``) shared by all replicas.
    secret_name: str = "shardmesh-webhook-certs"
    #: The Service in front of the webhook: its DNS names go into the certificate.
    service_name: str = "shardmesh-webhook"
    #: The MutatingWebhookConfiguration whose caBundle this webhook keeps current.
    webhook_config_name: str = "shardmesh-sidecar-injector"
    #: Extra subject alternative names (DNS names or IP addresses).
    extra_sans: tuple[str, ...] = ()
    #: Lifetime of the serving certificate, in seconds (renewed with 1/3 left).
    cert_lifetime_s: float = 90 * 86400.0
    #: Lifetime of the CA, in seconds (renewed with 1/3 left).
    ca_lifetime_s: float = 3 * 365 * 86400.0
    #: How often to look at the Secret, the files and the caBundle.
    cert_check_s: float = 60.0
    #: Seconds to keep trying an API server that does not answer at start-up
    #: (a connection error or a 5xx) before giving up; a 4xx fails at once.
    startup_wait_s: float = 30.0
    #: Address and port of the HTTPS listener.
    host: str = "0.0.0.0"
    port: int = 8443
    #: gunicorn workers (processes); see webhook/cli.py.
    workers: int = 2
    #: gunicorn worker class: gevent (a greenlet per connection) or gthread.
    worker_class: str = "gevent"
    #: Threads per worker, for the gthread worker class only.
    threads: int = 4
    #: Larger AdmissionReview bodies get HTTP 413.
    max_body_bytes: int = 4 * 1024 * 1024
    #: Seconds a TLS handshake may take; slower ones (a connection that never sends
    #: its ClientHello) are aborted and their connection closed.
    handshake_timeout_s: float = 5.0
    #: TLS handshakes in progress per worker; at the limit the oldest one is aborted
    #: to make room, so idle connections cannot lock the API server out.
    max_handshakes: int = 100
    #: Keep-alive connections waiting for a request, per worker (gunicorn's
    #: worker_connections is 1000); over it the one idle longest is closed, so
    #: connections that finish a handshake and then sit cannot fill the worker.
    max_idle_connections: int = 500
    #: Seconds to read a request's body and answer it; a slower client is disconnected.
    request_timeout_s: float = 10.0
    #: No Kubernetes API: namespaces have no labels or annotations and
    #: certificates must come from files. For benchmarks and local tests.
    offline: bool = False
    #: How long a namespace's labels and annotations are cached.
    namespace_cache_s: float = 5.0
    #: Kubeconfig for running outside a cluster; empty means in-cluster or ~/.kube.
    kubeconfig: str = ""
    #: The directory's URL as sidecars reach it (its Service), e.g.
    #: https://shardmesh-directory.shardmesh-system.svc:443; empty: sidecars watch the API
    #: server themselves. Injected with the CA, and only while the CA is known.
    directory_url: str = ""
    #: The directory's CA bundle (PEM) itself, for ``shardmesh inject`` and tests.
    directory_ca: str = ""
    #: A file holding it, re-read when it changes (the directory Secret's ca-bundle.crt,
    #: mounted); wins over directory_ca.
    directory_ca_file: str = ""
    #: debug, info, warning or error.
    log_level: str = "info"
    version: str = field(default=__version__)

    @property
    def native_sidecar(self) -> bool:
        """Whether the sidecar goes in as a restartable init container."""
        if self.kube_version is None:
            return True
        return parse_kube_version(self.kube_version) >= NATIVE_SIDECAR_SINCE

    def validate(self) -> Settings:
        if self.cert_mode not in ("self", "file"):
            raise ValueError(f"invalid cert mode '{self.cert_mode}': expected 'self' or 'file'")
        if self.cert_mode == "file" and not (self.cert_file and self.key_file):
            raise ValueError("cert mode 'file' needs --cert-file and --key-file")
        if self.offline and self.cert_mode == "self":
            raise ValueError("--offline has no API to keep certificates in: use --cert-mode file")
        if self.kube_version is not None:
            parse_kube_version(self.kube_version)
        if not 1 <= self.port <= 65535:
            raise ValueError(f"invalid port {self.port}: expected 1..65535")
        if self.workers < 1 or self.threads < 1:
            raise ValueError("--workers and --threads must be at least 1")
        for name in ("handshake_timeout_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{_flag(name)} must be more than 0")
        for name in ("max_handshakes", "max_body_bytes", "max_idle_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_flag(name)} must be at least 1, not {getattr(self, name)}")
        if self.directory_url and not self.directory_url.startswith(("https://", "http://")):
            raise ValueError(f"invalid value '{self.directory_url}' for --directory-url: "
                             "expected https://HOST[:PORT]")
        if self.worker_class not in WORKER_CLASSES:
            raise ValueError(f"invalid worker class '{self.worker_class}': expected "
                             + " or ".join(WORKER_CLASSES))
        return self


def parse_kube_version(text: str) -> tuple[int, int]:
    """``1.29``, ``v1.29.3`` or ``1.29+`` (as some providers report it) -> (1, 29)."""
    match = _VERSION.match(text.strip())
    if match is None:
        raise ValueError(f"invalid Kubernetes version '{text}': expected major.minor such as 1.29")
    return int(match[1]), int(match[2])


def parser(description: str) -> argparse.ArgumentParser:
    """One flag per field; the defaults are applied later, so env can fill the gaps."""
    return loader.parser(Settings, "shardmesh webhook", description,
                         "SHARDMESH_SIDECAR_IMAGE", skip=("version",))


def load(argv: Sequence[str], environ: Mapping[str, str], description: str = "") -> Settings:
    """Flags, then ``SHARDMESH_<FIELD>`` environment variables, then the defaults."""
    return loader.load(Settings, parser(description), argv, environ)
