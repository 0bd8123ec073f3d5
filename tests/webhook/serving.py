"""Run the real ``shardmesh webhook`` (gunicorn, TLS) in a subprocess for tests and benchmarks."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from tests.cluster.processes import free_port
from webhook import certs

HOST = "127.0.0.1"



def write_pair(directory: Path, lifetime: dt.timedelta = dt.timedelta(days=1)) -> certs.CertBundle:
    """A fresh CA and serving certificate for 127.0.0.1/localhost in ``directory``."""
    now = dt.datetime.now(dt.UTC)
    bundle = certs.fresh(("localhost", HOST), now, lifetime, lifetime * 2)
    certs.write_files(bundle.cert, bundle.key, str(directory / "tls.crt"),
                      str(directory / "tls.key"))
    (directory / "ca.crt").write_bytes(bundle.ca_bundle)
    return bundle


def client_context(cadata: bytes | None) -> ssl.SSLContext:
    if cadata is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cadata=cadata.decode())


def peer_serial(port: int) -> int:
    """The serial number of the certificate the server presents right now."""
    with socket.create_connection((HOST, port), timeout=5) as raw, \
            client_context(None).wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@dataclass
class Webhook:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    host: str = HOST

    def connection(self, cadata: bytes | None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=client_context(cadata),
                                           timeout=10)

    def samples(self, cadata: bytes | None, name: str) -> list[tuple[dict[str, str], float]]:
        """The labels and value of each sample of metric ``name`` on ``/metrics``."""
        from prometheus_client.parser import text_string_to_metric_families

        conn = self.connection(cadata)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return [(sample.labels, sample.value)
                for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name == name]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def decisions(self) -> list[dict[str, Any]]:
        """The decision log lines (one JSON object per review), oldest first."""
        return [json.loads(line) for line in self.logs().splitlines()
                if line.startswith("{") and '"msg":"decision"' in line]


def start(args: Sequence[str], log: Path, port: int | None = None,
          env: dict[str, str] | None = None, wait: float = 30.0, host: str = HOST,
          prefix: Sequence[str] = (), command: Sequence[str] | None = None,
          cwd: Path | None = None) -> Webhook:
    """Start ``shardmesh webhook`` and wait until ``/readyz`` answers over TLS."""
    return wait_ready(spawn(args, log, port, env, host, prefix, command, cwd), wait)


def spawn(args: Sequence[str], log: Path, port: int | None = None,
          env: dict[str, str] | None = None, host: str = HOST,
          prefix: Sequence[str] = (), command: Sequence[str] | None = None,
          cwd: Path | None = None) -> Webhook:
    """Start ``shardmesh webhook`` on ``host`` without waiting; ``prefix`` goes before the
    command line (e.g. ``ip netns exec NAME``, which execs the command, so the pid is its).
    ``command`` replaces ``python -m shardmesh`` (tests/smoke: an installed ``shardmesh``)."""
    port = port or free_port()
    shardmesh = list(command) if command is not None else [sys.executable, "-m", "shardmesh"]
    argv = [*prefix, *shardmesh, "webhook", "--host", host, "--port", str(port), *args]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env=env if command is not None else {**os.environ, **(env or {})})
    return Webhook(proc, port, log, host)


def wait_ready(hook: Webhook, wait: float = 30.0) -> Webhook:
    proc, port = hook.proc, hook.port
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"webhook exited with {proc.returncode}:\n{hook.logs()}")
        try:
            conn = hook.connection(None)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return hook
        except OSError:
            pass
        time.sleep(0.1)
    hook.stop()
    raise RuntimeError(f"webhook not ready on port {port} after {wait}s:\n{hook.logs()}")
