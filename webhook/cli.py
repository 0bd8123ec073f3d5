"""``shardmesh webhook``: the webhook under gunicorn, HTTPS only.

Process model and why:
- By default 2 gevent workers (``webhook.worker`` says why gevent). A review
  is pure Python, so one process uses one CPU at most; on a 2-CPU node two
  workers give the best p99 at c=16 (one or three were worse; README,
  Benchmarks). ``--worker-class
  gthread`` remains for those who cannot use gevent. With more than one
  worker, Prometheus multiprocess mode is switched on
  (``PROMETHEUS_MULTIPROC_DIR``) so ``/metrics`` still sums over all workers.
- The master prepares the certificate (self-managed: from the shared Secret;
  file mode: the given files) before it binds, and in self-managed mode it
  runs the rotation loop. Workers never talk to the Secret; each one's TLS
  context follows the files (``webhook.tls``), so a rotation reaches every
  worker without a restart.
- The Kubernetes client of the workers is created after the fork (in
  ``load``): a client's connection pool must not be shared across processes.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import importlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

from gunicorn.app.base import BaseApplication
from kubernetes import client, config

from webhook import logs
from webhook.logs import event
from webhook.settings import WORKER_CLASSES, Settings, load

DESCRIPTION = "Run the shardmesh mutating admission webhook (HTTPS, POST /mutate)."


def api_client(settings: Settings) -> client.ApiClient:
    """In-cluster credentials, else ``--kubeconfig``/``$KUBECONFIG``/~/.kube/config."""
    if not settings.kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=settings.kubeconfig or None)
    return api


def detect_kube_version(api: client.ApiClient) -> str:
    info = client.VersionApi(api).get_code()
    return f"{info.major}.{info.minor.rstrip('+')}"


class _PerProcess:
    """The TLS context holder of the current process (recreated after a fork)."""

    pid = -1
    context: Any = None
    throttle_pid = -1
    _throttle: Any = None

    @classmethod
    def throttle(cls) -> Any:
        """The log throttle for aborted handshakes: one per process, whether gunicorn
        asks the ``ssl_context`` hook once (gevent) or for every connection (gthread)."""
        if cls.throttle_pid != os.getpid():
            cls.throttle_pid, cls._throttle = os.getpid(), logs.Throttle()
        return cls._throttle

    @classmethod
    def get(cls, cert_file: str, key_file: str) -> Any:
        from webhook.tls import ReloadingContext

        if cls.pid != os.getpid():
            cls.pid, cls.context = os.getpid(), ReloadingContext(cert_file, key_file)
            # Load now, not at the first handshake: every worker then logs
            # "certificate loaded" at boot and "certificate reloaded" on rotation,
            # whichever worker the kernel hands the next connection to.
            cls.context.loaded()
        return cls.context


class WebhookApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn configured in code: no config file, no command line of its own."""

    def __init__(self, settings: Settings, cert_file: str, key_file: str,
                 on_ready: Any = None) -> None:
        self.settings, self.cert_file, self.key_file = settings, cert_file, key_file
        self.on_ready = on_ready
        super().__init__(prog="shardmesh webhook")

    def load_config(self) -> None:
        s = self.settings
        cert_file, key_file = self.cert_file, self.key_file

        # gthread: the handshake in wrap_socket, bounded; gevent: in the worker.
        handshake_timeout = s.handshake_timeout_s if s.worker_class == "gthread" else None

        def ssl_context(_conf: Any, _default: Any) -> Any:
            from webhook.tls import FollowingContext

            return FollowingContext(_PerProcess.get(cert_file, key_file), handshake_timeout,
                                    _PerProcess.throttle())

        values: dict[str, Any] = {
            "bind": [f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"],
            "workers": s.workers,
            "threads": s.threads,
            "worker_class": WORKER_CLASSES[s.worker_class],
            # Each worker gets its own listening socket and the kernel spreads
            # new connections over them. On one shared socket the first worker
            # to wake took all 16 of a client's connections (measured).
            "reuse_port": True,
            "certfile": cert_file,
            "keyfile": key_file,
            "ssl_context": ssl_context,
            "timeout": 30,
            "graceful_timeout": 10,
            "keepalive": 30,
            "loglevel": s.log_level,
            "accesslog": None,
            "proc_name": "shardmesh-webhook",
            "limit_request_line": 8190,
            # No control socket: the root filesystem is read-only in the pod, and
            # replicas on one machine (tests) would fight over the same path.
            "control_socket_disable": True,
            # gunicorn_h1c (picohttpparser, by gunicorn's author) parses request
            # heads in C: 6-7% less CPU per review than gunicorn's Python parser
            # (paired rounds of bench/webhook.py). "auto" falls back to Python
            # if it is missing; the start-up log says which one runs.
            "http_parser": "auto",
            # Nothing stands between the API server and the webhook, so no
            # forwarding header is honoured: the header lists are empty. The
            # allow list is "*" only because gunicorn otherwise parses the peer's
            # address with ipaddress on every request; with empty lists it grants
            # nothing.
            "forwarded_allow_ips": "*",
            "forwarder_headers": "",
            "secure_scheme_headers": {},
        }
        if self.on_ready is not None:
            values["when_ready"] = lambda _server: self.on_ready()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            values["child_exit"] = _mark_dead
        for key, value in values.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from webhook import namespaces
        from webhook.events import EventRecorder
        from webhook.server import create_app

        s = self.settings
        tls = _PerProcess.get(self.cert_file, self.key_file)
        if s.offline:
            app = create_app(s, namespaces.offline, ready=tls.loaded)
        else:
            api = api_client(s)
            app = create_app(s, namespaces.NamespaceCache(api, s.namespace_cache_s),
                             ready=tls.loaded, recorder=EventRecorder(api).record)
        # Everything loaded so far (the kubernetes client alone is ~50k objects)
        # lives as long as the worker. Frozen, the collector stops rescanning it:
        # a full collection took ~23 ms, which was the whole p99 at c=16.
        gc.collect()
        gc.freeze()
        return app


def _mark_dead(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def prepare(settings: Settings) -> tuple[Settings, str, str, Any]:
    """Settings with the cluster version filled in, the certificate files, and the
    callable that starts certificate rotation once gunicorn is up (or None)."""
    if settings.offline:
        return settings, settings.cert_file, settings.key_file, None
    api = api_client(settings)
    if settings.kube_version is None:
        settings = dataclasses.replace(settings, kube_version=detect_kube_version(api))
        event("detected the cluster version", kube_version=settings.kube_version,
              native_sidecar=settings.native_sidecar)
    if settings.cert_mode == "file":
        return settings, settings.cert_file, settings.key_file, None
    from webhook.certstore import CertStore, run_rotation

    os.makedirs(settings.cert_dir, mode=0o700, exist_ok=True)
    cert_file = os.path.join(settings.cert_dir, "tls.crt")
    key_file = os.path.join(settings.cert_dir, "tls.key")
    store = CertStore(api, settings)
    store.sync(cert_file, key_file)
    stop = threading.Event()
    return settings, cert_file, key_file, lambda: run_rotation(
        store, cert_file, key_file, settings.cert_check_s, stop)


def transient(err: Exception) -> bool:
    """Whether a start-up failure may pass by itself: the API server not answering
    (yet) or answering 5xx. A 4xx (credentials, RBAC) or a bad setting will not."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(err, ApiException):
        return err.status is None or err.status >= 500 or err.status == 429
    return isinstance(err, OSError) or type(err).__name__ in ("MaxRetryError", "ProtocolError")


def prepare_patiently(settings: Settings) -> tuple[Settings, str, str, Any]:
    """``prepare``, tried again for ``startup_wait_s`` while the failure is transient:
    an API server that restarts, or a network that is not up yet, as the pod
    starts, costs a few seconds instead of a crash and a restart back-off."""
    deadline = time.monotonic() + settings.startup_wait_s
    pause = 0.5
    while True:
        try:
            return prepare(settings)
        except Exception as err:
            if not transient(err) or time.monotonic() + pause > deadline:
                raise
            event("the API server is not answering yet; trying again", logging.WARNING,
                  error=f"{type(err).__name__}: {str(err)[:300]}", retry_in_s=pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def _remove_in_master(path: str, master: int) -> None:
    # Workers are forks of the master and inherit its atexit hooks.
    if os.getpid() == master:
        shutil.rmtree(path, ignore_errors=True)


def http_parser() -> str:
    """The request-head parser gunicorn picks with ``http_parser="auto"``, by its own
    rule: gunicorn_h1c if it imports and is new enough (it has ``LimitRequestLine``,
    0.4.1), else its Python parser. None of the flags that rule it out are set here."""
    try:
        h1c = importlib.import_module("gunicorn_h1c")
    except ImportError:
        return "python"
    return "gunicorn_h1c" if hasattr(h1c, "LimitRequestLine") else "python"


def main(argv: list[str]) -> int:
    try:
        settings = load(argv, os.environ, DESCRIPTION)
    except ValueError as err:
        print(f"shardmesh webhook: {err}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="shardmesh-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        atexit.register(_remove_in_master, metrics_dir, os.getpid())
    try:
        settings, cert_file, key_file, on_ready = prepare_patiently(settings)
    except Exception as err:  # the message is all an operator needs; no traceback
        print(f"shardmesh webhook: cannot start: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    for path in (cert_file, key_file):
        if not os.path.isfile(path):
            print(f"shardmesh webhook: certificate file '{path}' does not exist", file=sys.stderr)
            return 1
    event("starting", port=settings.port, workers=settings.workers,
          worker_class=settings.worker_class, threads=settings.threads,
          cert_mode=settings.cert_mode, offline=settings.offline,
          http_parser=http_parser())
    WebhookApplication(settings, cert_file, key_file, on_ready).run()
    return 0
