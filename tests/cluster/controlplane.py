"""A real, throw-away Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager.

Rules:
- Everything listens on 127.0.0.1 on free ports, and everything (certificates,
  etcd data, logs) lives in one temp dir that ``stop()`` removes.
- No scheduler and no kubelet: pods keep an empty ``nodeName`` (so deleting
  one is immediate) and tests play the kubelet with ``tests.cluster.kubelet``.
- A start that fails raises ControlPlaneError carrying the log tail of the
  component at fault, so the reason is in the pytest report.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tests.cluster.binaries import Binaries
from tests.cluster.pki import KeyPair, Pki, issue_client_cert, write_pki
from tests.cluster.processes import ManagedProcess, free_port

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

# Controllers the tests rely on, plus the cheap ones a workload expects (new
# names; see cmd/kube-controller-manager/names). The endpoint controllers are
# left out on purpose: simulated pods have loopback IPs, which Endpoints and
# EndpointSlice validation reject, so they would only retry and log. Node,
# volume and IPAM controllers have no nodes or volumes to act on here.
CONTROLLERS = (
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "daemonset-controller",
    "job-controller",
    "cronjob-controller",
    "disruption-controller",
    "pod-garbage-collector-controller",
    "ttl-after-finished-controller",
)


class ControlPlaneError(RuntimeError):
    """The control plane could not be started (or restarted)."""


@dataclass(frozen=True)
class ControlPlaneSettings:
    """Knobs of the test control plane; :meth:`from_env` is the only reader of the environment."""

    start_timeout: float = 90.0
    """Seconds to wait for /readyz and for the controllers to act, on a loaded 2-core machine."""
    service_cidr: str = "10.0.0.0/24"
    """Only allocated from, never routed: there is no kube-proxy, and no test talks to it."""
    keep_dir: bool = False
    """Leave the temp dir (logs, certs) in place after stop, for debugging."""
    extra_apiserver_args: tuple[str, ...] = ()
    """Appended to kube-apiserver's command line (e.g. ``--feature-gates=...``)."""
    extra_controllers: tuple[str, ...] = ()
    """Added to :data:`CONTROLLERS` (the node tier's real pod IPs want the endpoint controllers)."""

    @classmethod
    def from_env(cls) -> ControlPlaneSettings:
        return cls(keep_dir=os.environ.get("SHARDMESH_KEEP_CLUSTER", "") not in ("", "0"))


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, user: str, client: KeyPair) -> Path:
    """A self-contained kubeconfig (certificates inlined) for one client identity."""
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "shardmesh-test", "cluster": {
            "server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": _b64(client.cert),
            "client-key-data": _b64(client.key)}}],
        "contexts": [{"name": "shardmesh-test", "context": {
            "cluster": "shardmesh-test", "user": user}}],
        "current-context": "shardmesh-test",
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call whose message includes what kubectl printed."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager in a temp dir; see the module rules."""

    def __init__(self, binaries: Binaries, settings: ControlPlaneSettings | None = None) -> None:
        self.binaries = binaries
        self.settings = settings or ControlPlaneSettings()
        self.dir = Path(tempfile.mkdtemp(prefix="shardmesh-cp-"))
        self.port = free_port()
        self._etcd_port = free_port()
        self._etcd_peer_port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = self.dir / "admin.kubeconfig"
        self.startup_seconds: float | None = None
        self._pki: Pki | None = None
        self._etcd: ManagedProcess | None = None
        self._apiserver: ManagedProcess | None = None
        self._controller_manager: ManagedProcess | None = None

    # ---- life cycle -------------------------------------------------------------------

    def start(self) -> float:
        """Start all three components and wait until they serve; returns the seconds taken."""
        began = time.monotonic()
        try:
            self._pki = write_pki(self.dir / "pki", self._service_ip())
            write_kubeconfig(self.kubeconfig, self.server, self._pki.ca.cert,
                             "admin", self._pki.admin)
            self._etcd = self._spawn("etcd", self._etcd_argv())
            self._apiserver = self._spawn("kube-apiserver", self._apiserver_argv())
            self._wait_ready(self._apiserver, "/readyz")
            # Started only now: it gives up if the apiserver is not healthy within 10 s.
            self._controller_manager = self._spawn("kube-controller-manager", self._kcm_argv())
            self._wait_for(self._controller_manager, "the 'default' ServiceAccount",
                           lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default")
                           == 200)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self.startup_seconds

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and remove the temp dir."""
        # Clients before servers (an apiserver without etcd hangs). An apiserver
        # with watch clients still connected stops listening at once but lingers
        # before exiting; its data is thrown away, so it gets a short grace.
        for proc in reversed(list(self._alive_required())):
            proc.stop(grace=1.0 if proc is self._apiserver else 5.0)
        if not self.settings.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port with the same certificates."""
        if self._apiserver is None:
            raise ControlPlaneError("restart_apiserver() called before start()")
        # See stop(): with clients connected it lingers (seen: 15 s and more).
        self._apiserver.stop(grace=1.0)
        self._apiserver = self._spawn("kube-apiserver", self._apiserver_argv())
        self._wait_ready(self._apiserver, "/readyz")

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- clients ----------------------------------------------------------------------

    def api_client(self) -> ApiClient:
        """A new ``kubernetes.client.ApiClient`` logged in as cluster admin."""
        from kubernetes import config  # imported here: unit-only runs need not load it

        api: ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig))
        return api

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane; raises KubectlError on failure if ``check``."""
        argv = [str(self.binaries.path("kubectl")), "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def logs(self) -> dict[str, Path]:
        """Log file of each component, by name."""
        return {p.name: p.log for p in (self._etcd, self._apiserver, self._controller_manager)
                if p is not None}

    # ---- command lines ----------------------------------------------------------------

    def _service_ip(self) -> str:
        return str(next(ipaddress.ip_network(self.settings.service_cidr).hosts()))

    def service_ip(self) -> str:
        """The ``kubernetes`` Service's ClusterIP (in the API server's certificate)."""
        return self._service_ip()

    def ca_cert(self) -> Path:
        return self._require_pki().ca.cert

    def issue_client_cert(self, stem: str, user: str, group: str | None = None) -> KeyPair:
        """A client certificate for ``user`` (in ``group``) signed by this cluster's CA."""
        pki = self._require_pki()
        return issue_client_cert(pki.ca, self.dir / "pki", stem, user, group)

    def _etcd_argv(self) -> list[str]:
        return [
            str(self.binaries.path("etcd")),
            "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{self._etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self._etcd_peer_port}",
        ]

    def _apiserver_argv(self) -> list[str]:
        pki = self._require_pki()
        return [
            str(self.binaries.path("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{self._etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_public}",
            f"--service-account-signing-key-file={pki.sa_private}",
            f"--service-cluster-ip-range={self.settings.service_cidr}",
            "--authorization-mode=Node,RBAC",
            # Its Endpoints would hold 127.0.0.1, which validation refuses.
            "--endpoint-reconciler-type=none",
            # Webhooks behind a Service are called at an EndpointSlice address: no kube-proxy.
            "--enable-aggregator-routing=true",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            *self.settings.extra_apiserver_args,
        ]

    def _kcm_argv(self) -> list[str]:
        pki = self._require_pki()
        kubeconfig = write_kubeconfig(self.dir / "controller-manager.kubeconfig", self.server,
                                      pki.ca.cert, "system:kube-controller-manager",
                                      pki.controller_manager)
        return [
            str(self.binaries.path("kube-controller-manager")),
            f"--kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            "--use-service-account-credentials=true",
            f"--root-ca-file={pki.ca.cert}",
            f"--service-account-private-key-file={pki.sa_private}",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            f"--controllers={','.join(CONTROLLERS + self.settings.extra_controllers)}",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--v=1",
        ]

    def _require_pki(self) -> Pki:
        if self._pki is None:
            raise ControlPlaneError("certificates not generated yet: call start() first")
        return self._pki

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.dir / f"{name}.log")
        proc.start()
        return proc

    # ---- readiness --------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self._require_pki()
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
        return ctx

    def _get(self, path: str) -> int | None:
        """HTTP status of an admin GET, or None if the apiserver does not answer."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self._ssl_context(),
                                           timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def _wait_ready(self, proc: ManagedProcess, path: str) -> None:
        self._wait_for(proc, f"{path} to answer 200", lambda: self._get(path) == 200)

    def _wait_for(self, proc: ManagedProcess, what: str, done: Callable[[], bool]) -> None:
        """Poll ``done`` until true; fail early, with logs, if a component dies."""
        deadline = time.monotonic() + self.settings.start_timeout
        while not done():
            for p in self._alive_required():
                if not p.running():
                    raise ControlPlaneError(f"while waiting for {what}: {p.describe_failure()}")
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"timed out after {self.settings.start_timeout:.0f}s waiting for {what}: "
                    f"{proc.describe_failure()}"
                )
            time.sleep(0.1)

    def _alive_required(self) -> Iterator[ManagedProcess]:
        for p in (self._etcd, self._apiserver, self._controller_manager):
            if p is not None:
                yield p


@contextlib.contextmanager
def running_control_plane(binaries: Binaries) -> Iterator[ControlPlane]:
    """Start a control plane for the duration of a ``with`` block."""
    cp = ControlPlane(binaries, ControlPlaneSettings.from_env())
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()
