"""``shardmesh directory``: wire the pieces together and serve until SIGTERM.

Certificates are managed as the webhook's are (``webhook.certstore``): in self
mode every replica syncs one Secret holding a CA and a serving certificate for
the Service's names, rotated before expiry; in file mode the files come from
cert-manager. Either way the TLS context reloads the files in place, so new
connections get the new certificate while streams keep theirs.

The CA bundle (self mode: ``ca-bundle.crt`` next to the certificate, with the
staged next CA during a rotation's overlap; file mode: ``--ca-file``) is
followed the same way and sent to every stream when it changes
(``directory.trust``), so running sidecars trust the next CA before it signs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Any

from directory.auth import Auth
from directory.hub import Hub
from directory.informer import Informer
from directory.maps import MapKey
from directory.server import Directory
from directory.settings import Settings, load
from directory.trust import Trust

log = logging.getLogger("shardmesh.directory")


class StartupError(RuntimeError):
    """The directory cannot start; the message says why (shown without a traceback)."""


def api_client(settings: Settings) -> Any:
    """A client from --kubeconfig, else the pod's service account; pooled for many watches."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if settings.kubeconfig:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=settings.kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
    except (config.ConfigException, OSError, ValueError) as err:
        where = (f"kubeconfig {settings.kubeconfig}" if settings.kubeconfig
                 else "in-cluster config (no --kubeconfig given)")
        raise StartupError(f"cannot load the {where}: {err}") from None
    # Each informer holds two watch connections; reviews use a few more.
    configuration.connection_pool_maxsize = 128
    return client.ApiClient(configuration)


def certificates(settings: Settings, api: Any, stop: threading.Event) -> tuple[str, str, str]:
    """The serving certificate, key and CA bundle files; in self mode, kept current by a
    thread (the CA rotation staged for ``ca_overlap_s`` before it signs)."""
    if settings.cert_mode == "file":
        return settings.cert_file, settings.key_file, settings.ca_file
    from webhook.certstore import CertStore, run_rotation

    os.makedirs(settings.cert_dir, mode=0o700, exist_ok=True)
    cert_file = os.path.join(settings.cert_dir, "tls.crt")
    key_file = os.path.join(settings.cert_dir, "tls.key")
    ca_file = os.path.join(settings.cert_dir, "ca-bundle.crt")
    store = CertStore(api, settings, component="directory", ca_overlap_s=settings.ca_overlap_s)
    store.sync(cert_file, key_file, ca_file)
    run_rotation(store, cert_file, key_file, settings.cert_check_s, stop, ca_file)
    return cert_file, key_file, ca_file


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _stamp(*paths: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in paths)
    except OSError:
        return ()


async def follow_files(context: ssl.SSLContext, cert_file: str, key_file: str,
                       interval: float, trust: Trust, trust_changed: Callable[[], None]
                       ) -> None:
    """Load a changed certificate into the live context: new handshakes use it. A changed
    CA bundle goes to every stream first (the sync writes it before the certificate)."""
    seen = _stamp(cert_file, key_file)
    while True:
        await asyncio.sleep(interval)
        if trust.reload():
            trust_changed()
        stamp = _stamp(cert_file, key_file)
        if stamp and stamp != seen:
            try:
                context.load_cert_chain(cert_file, key_file)
            except (ssl.SSLError, OSError) as err:  # half-written: try again next time
                log.warning("certificate %s not reloaded: %s", cert_file, err)
                continue
            seen = stamp
            log.info("certificate %s reloaded", cert_file)


async def serve(settings: Settings) -> None:
    stop_threads = threading.Event()
    api = api_client(settings)
    cert_file, key_file, ca_file = await asyncio.to_thread(certificates, settings, api,
                                                           stop_threads)
    context = server_context(cert_file, key_file)
    trust = Trust(ca_file)
    trust.reload()

    def informer(key: MapKey, deliver: Any) -> Informer:
        return Informer(key, api, deliver)

    hub = Hub(informer, settings.linger_s)
    auth = Auth(api, settings.auth_cache_s, settings.deny_cache_s, settings.auth_cache_size)
    directory = Directory(settings, hub, auth, trust=trust)
    server = await asyncio.start_server(
        directory.handle, settings.host, settings.port, ssl=context, backlog=4096,
        ssl_handshake_timeout=settings.handshake_timeout_s, limit=16 * 1024)
    reload = asyncio.create_task(follow_files(context, cert_file, key_file,
                                              min(settings.cert_check_s, 10.0), trust,
                                              directory.trust_changed))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log.info("directory serving on https://%s:%d", settings.host, settings.port)
    print(f"shardmesh directory: serving on https://{settings.host}:{settings.port}",
          file=sys.stderr, flush=True)
    await stopping.wait()
    server.close()
    reload.cancel()
    hub.stop_all()
    stop_threads.set()


def main(argv: list[str]) -> int:
    try:
        settings = load(argv, os.environ)
    except ValueError as err:
        print(f"shardmesh directory: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        import uvloop

        uvloop.run(serve(settings))
    except StartupError as err:
        print(f"shardmesh directory: {err}", file=sys.stderr)
        return 1
    return 0


