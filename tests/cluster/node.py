"""A real node for the tests: containerd + runc + CNI bridge + kubelet (+ kube-scheduler).

What works on this kind of machine (Debian 12, cgroup v1, root, no systemd):
kubelet v1.37.2 built from the control plane's own ``k8s.io/kubernetes`` module
(``build-node.sh``), Debian's containerd 1.6 and runc 1.1, the CNI ``bridge`` and
``host-local`` plugins built from ``containernetworking/plugins``. See
``/work/shared/NODE.md`` for the recipe this follows; the pitfalls that matter:

- containerd is OUR instance (own root, state, socket, CNI dirs), never docker's.
  Its root (images, snapshots) is kept across runs in the cache, so a warm run
  imports nothing; its state, the kubelet's root and all logs live in ``RUN``
  and are thrown away.
- ``restrict_oom_score_adj = true``: without CAP_SYS_RESOURCE runc cannot write
  oom_score_adj and every sandbox fails ("can't get final child's PID from pipe").
- The node IP is the bridge's own address, so the bridge comes up first; the
  API server reaches the kubelet at its InternalIP (the control plane runs with
  ``--kubelet-preferred-address-types=InternalIP``) for logs and exec.
- ``makeIPTablesUtilChains: false``: no KUBE-FIREWALL chains on the host.
- br_netfilter + a FORWARD policy of DROP drop pod-to-pod traffic: one
  ``FORWARD -i smnode0 -o smnode0 -j ACCEPT`` rule.
- No kube-proxy and no CoreDNS: ``tests/cluster/services.py`` is the little of both
  that the pods need (Service names, ClusterIPs to one ready endpoint). Pods reach
  the API server at the ``kubernetes`` Service's ClusterIP (what in-cluster config
  uses) through one nat rule of the node's, PREROUTING
  ``-i smnode0 -d <service IP> --dport 443 -j DNAT --to 127.0.0.1:<apiserver>``
  with ``route_localnet`` on the bridge. The API server reaches the webhook's
  Service at its endpoint IPs (``--enable-aggregator-routing=true``), which the
  endpointslice controller fills from the real pod IPs on the bridge.

Teardown (``stop``, and ``clean_stale`` at the start of the next run after a
killed one): every pod sandbox removed through CRI (containerd is started again
for that if needed), containerd's shims killed, mounts under ``RUN`` undone, the
``kubepods`` cgroups removed, the iptables rules and the bridge deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.cluster import binaries
from tests.cluster.controlplane import ControlPlane, write_kubeconfig
from tests.cluster.pki import KeyPair
from tests.cluster.processes import ManagedProcess, tail
from tests.cluster.services import Services

BRIDGE = "smnode0"
#: Outside tests/cluster/netns.py's pool (10.213.0.0/16), which other tests (in this or
#: another work tree) take /30s from while this runs.
SUBNET = "10.214.128.0/24"
GATEWAY = "10.214.128.1"
NODE_NAME = "smnode"
RUN = Path("/run/shardmesh-node")
#: Held (flock) for a node's whole life: the bridge, subnet, port 10250 and RUN are
#: machine-wide, so a second run (another work tree's make test) waits for the first,
#: and only the holder may clean up after a killed run (the kernel drops a dead one's lock).
LOCK = Path("/run/shardmesh-node.lock")
LOCK_WAIT = 1200.0
SANDBOX_IMAGE = "shardmesh.local/pause:1"
NAMESPACE = "k8s.io"  # containerd's namespace for CRI
#: Controllers the node tier needs on top of the control plane's: Services get
#: real endpoints (the webhook's, for the API server's aggregator routing), and
#: the node lifecycle controller lifts the ``node.kubernetes.io/not-ready``
#: taint the kubelet registers with (v1.37; nothing schedules without it).
EXTRA_CONTROLLERS = ("endpoints-controller", "endpointslice-controller",
                     "node-lifecycle-controller")
TOOLS = ("containerd", "runc", "iptables", "ip")
APT_PACKAGES = "containerd runc iptables iproute2"


class NodeError(RuntimeError):
    """The node could not be started."""


def node_dir() -> Path:
    version = binaries.kubernetes_version()
    return binaries.cache_root() / f"node-{version}"


def containerd_root() -> Path:
    """Images and snapshots, kept across runs (a warm run imports nothing)."""
    return binaries.cache_root() / "node-containerd"


def build() -> None:
    """build-node.sh (a few minutes the first time; apt-installs containerd & co. as root)."""
    subprocess.run(["bash", str(Path(__file__).resolve().parent / "build-node.sh")], check=False)


def missing_prerequisites() -> list[str]:
    """What this host lacks to run the node, one short phrase each (empty: all there)."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("root (kubelet and containerd need it)")
    cgroups = Path("/sys/fs/cgroup")
    if not (cgroups / "memory").is_dir() and not (cgroups / "cgroup.controllers").is_file():
        missing.append("a memory cgroup at /sys/fs/cgroup")
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        missing.append(f"{', '.join(absent)} (apt-get install {APT_PACKAGES})")
    built = node_dir()
    if not (built / ".complete").is_file():
        missing.append(f"the node binaries in {built} (make node-bins; needs Go)")
    return missing


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                            check=False)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({result.returncode}): "
                        f"{result.stderr.strip() or result.stdout.strip()}")
    return result


@dataclass(frozen=True)
class Paths:
    run: Path = RUN

    @property
    def containerd_state(self) -> Path:
        return self.run / "containerd-state"

    @property
    def socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.run / "containerd.toml"

    @property
    def cni_conf(self) -> Path:
        return self.run / "cni" / "net.d"

    @property
    def kubelet_root(self) -> Path:
        return self.run / "kubelet"


def containerd_config(paths: Paths, bins: Path) -> str:
    """containerd 1.6 (config version 2): CRI on, local pause, restricted oom_score_adj."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{containerd_root()}"
state = "{paths.containerd_state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{paths.socket}"
[ttrpc]
  address = "{paths.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[{cri}]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{bins / 'cni'}"
    conf_dir = "{paths.cni_conf}"
    max_conf_num = 1
"""


def cni_config(paths: Paths, service_cidr: str) -> dict[str, object]:
    """The bridge; pods route only their subnet and the service range (to the DNAT), no default."""
    return {
        "cniVersion": "1.0.0",
        "name": "smnode",
        "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
            "hairpinMode": False,
            "ipam": {"type": "host-local", "dataDir": str(paths.run / "cni" / "ipam"),
                     "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                     "routes": [{"dst": service_cidr}]},
        }],
    }


def kubelet_config(paths: Paths, ca: Path, port: int) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "address": GATEWAY,
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "AlwaysAllow"},
        "resolvConf": str(paths.run / "resolv.conf"),
        # tests/cluster/services.py answers on the bridge's address.
        "clusterDNS": [GATEWAY],
        "clusterDomain": "cluster.local",
        "hairpinMode": "none",
        "makeIPTablesUtilChains": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%"},
        "podLogsDir": str(paths.run / "pod-logs"),
        "volumePluginDir": str(paths.run / "volume-plugins"),
        "serializeImagePulls": False,
        # syncFrequency stays at its default (1 min): a downward API file follows
        # an annotation change within about 1.5 s anyway (the pod update triggers
        # a sync), which the node tier measures.
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
    }


OUR_PROGRAMS = frozenset({"containerd", "kubelet", "kube-scheduler", "crictl"})


def _our_processes(paths: Paths, shims: bool) -> list[int]:
    """PIDs whose command line names ``paths.run`` (our containerd, kubelet, scheduler, or
    with ``shims`` the containerd shims serving our socket, which outlive containerd)."""
    needle = str(paths.run).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        program = os.path.basename(cmdline.split(b"\0", 1)[0]).decode(errors="replace")
        wanted = program.startswith("containerd-shim") if shims else program in OUR_PROGRAMS
        if wanted and needle in cmdline:  # e.g. a 'tail -f' of a log there is left alone
            found.append(int(proc.name))
    return found


def _kill_ours(paths: Paths, shims: bool) -> None:
    pids = _our_processes(paths, shims)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM if not shims else signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _kill_cgroup_tree(root: Path) -> None:
    """SIGKILL every process left in a kubepods cgroup tree, then rmdir it depth-first."""
    if not root.is_dir():
        return
    dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for d in [*dirs, root]:
        with contextlib.suppress(OSError):
            for pid in (d / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
    for d in [*dirs, root]:
        for _ in range(20):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


def _unmount_under(root: Path) -> None:
    prefix = str(root)
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        _run("umount", "-l", point, check=False)


def _remove_our_nat_rules() -> None:
    """Every PREROUTING rule on our bridge (a killed run's port is unknown)."""
    listing = _run("iptables", "-t", "nat", "-S", "PREROUTING", check=False).stdout
    for line in listing.splitlines():
        if f"-i {BRIDGE} " in line and line.startswith("-A "):
            _run("iptables", "-t", "nat", "-D", *line.split()[1:], check=False)


def clean_stale(paths: Paths = Paths(), crictl: Path | None = None) -> None:
    """Undo whatever a previous (possibly killed) run left: pods, shims, mounts, cgroups, net."""
    if paths.run.exists():
        _kill_ours(paths, shims=False)  # a killed run's kubelet or containerd, still exiting
        if paths.containerd_config.is_file() and crictl is not None:
            _remove_pods_with_fresh_containerd(paths, crictl)
        _kill_ours(paths, shims=True)
        _unmount_under(paths.run)
    for controller in Path("/sys/fs/cgroup").iterdir():
        _kill_cgroup_tree(controller / "kubepods")
    while _run("iptables", "-D", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT",
               check=False).returncode == 0:
        pass
    _remove_our_nat_rules()
    _run("ip", "link", "del", BRIDGE, check=False)
    if paths.run.exists():
        _unmount_under(paths.run)
        shutil.rmtree(paths.run, ignore_errors=True)


def _remove_pods_with_fresh_containerd(paths: Paths, crictl: Path) -> None:
    """A killed run's sandboxes (netns, CNI leases, mounts) are best removed through CRI."""
    log = paths.run / "containerd-stale.log"
    proc = ManagedProcess("containerd", ["containerd", "--config", str(paths.containerd_config)],
                          log)
    with contextlib.suppress(OSError):
        paths.socket.unlink()
    proc.start()
    try:
        for _ in range(100):
            if paths.socket.exists():
                break
            time.sleep(0.1)
        endpoint = f"unix://{paths.socket}"
        _run(str(crictl), "-r", endpoint, "-i", endpoint, "rmp", "-af", check=False, timeout=60)
    finally:
        proc.stop(grace=5.0)


class Node:
    """containerd, the bridge, kubelet and kube-scheduler, registered with ``cp``."""

    def __init__(self, cp: ControlPlane, paths: Paths = Paths()) -> None:
        self.cp = cp
        self.paths = paths
        self.bins = node_dir()
        self.crictl = self.bins / "crictl"
        self._containerd: ManagedProcess | None = None
        self._kubelet: ManagedProcess | None = None
        self._scheduler: ManagedProcess | None = None
        self._services: Services | None = None
        self._rules: list[list[str]] = []
        self._lock_file: IO[str] | None = None
        self.timings: dict[str, float] = {}

    # ---- life cycle -------------------------------------------------------------------

    def _lock(self) -> None:
        self._lock_file = LOCK.open("a")
        deadline = time.monotonic() + LOCK_WAIT
        said = False
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NodeError(f"another test run held {LOCK} for {LOCK_WAIT:.0f}s"
                                    ) from None
                if not said:
                    print(f"node: waiting for another run's node to finish ({LOCK})",
                          flush=True)
                    said = True
                time.sleep(1)

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # drops the flock
            self._lock_file = None

    def start_runtime(self) -> None:
        """Clean up a previous run, then containerd and the bridge (images can be imported)."""
        began = time.monotonic()
        self._lock()
        self.timings["waiting for the lock"] = time.monotonic() - began
        clean_stale(self.paths, self.crictl)
        for d in (self.paths.run, self.paths.containerd_state, self.paths.cni_conf,
                  containerd_root()):
            d.mkdir(parents=True, exist_ok=True)
        self.paths.containerd_config.write_text(containerd_config(self.paths, self.bins))
        (self.paths.cni_conf / "10-smnode.conflist").write_text(
            json.dumps(cni_config(self.paths, self.cp.settings.service_cidr), indent=1))
        (self.paths.run / "resolv.conf").write_text("options ndots:1\n")
        self._bridge_up()
        self._containerd = ManagedProcess(
            "containerd", ["containerd", "--config", str(self.paths.containerd_config)],
            self.paths.run / "containerd.log")
        self._containerd.start()
        self._wait(lambda: self._ctr("version", check=False).returncode == 0,
                   "containerd to answer", self._containerd)
        self.timings["runtime"] = time.monotonic() - began

    def start_kubelet(self) -> None:
        """kube-scheduler and kubelet; returns once the node is Ready."""
        began = time.monotonic()
        self._add_rule(["nat", "PREROUTING", "-i", BRIDGE, "-p", "tcp", "-d",
                        self.cp.service_ip(), "--dport", "443", "-j", "DNAT",
                        "--to-destination", f"127.0.0.1:{self.cp.port}"])
        self._services = Services(self.cp.api_client(), BRIDGE, GATEWAY).start()
        kubelet_pair = self.cp.issue_client_cert("kubelet", f"system:node:{NODE_NAME}",
                                                 "system:nodes")
        scheduler_pair = self.cp.issue_client_cert("scheduler", "system:kube-scheduler")
        kubelet_kc = self._kubeconfig("kubelet", f"system:node:{NODE_NAME}", kubelet_pair)
        scheduler_kc = self._kubeconfig("scheduler", "system:kube-scheduler", scheduler_pair)
        self._scheduler = ManagedProcess("kube-scheduler", [
            str(self.bins / "kube-scheduler"), f"--kubeconfig={scheduler_kc}",
            "--leader-elect=false", "--secure-port=0", "--v=1"],
            self.paths.run / "kube-scheduler.log")
        self._scheduler.start()
        config = self.paths.run / "kubelet.yaml"
        config.write_text(json.dumps(kubelet_config(self.paths, self.cp.ca_cert(),
                                                    self.kubelet_port)))
        self._kubelet = ManagedProcess("kubelet", [
            str(self.bins / "kubelet"), f"--config={config}", f"--kubeconfig={kubelet_kc}",
            f"--root-dir={self.paths.kubelet_root}",
            f"--cert-dir={self.paths.run / 'kubelet-pki'}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={GATEWAY}", "--v=1"],
            self.paths.run / "kubelet.log")
        self._kubelet.start()
        self._wait(self._node_ready, f"node {NODE_NAME} Ready", self._kubelet, timeout=90)
        self.timings["kubelet"] = time.monotonic() - began

    kubelet_port = 10250

    def stop(self) -> None:
        """Everything, even after a failed start; the control plane is the caller's."""
        if self._lock_file is None:
            return  # never started, or another run's: nothing here is ours
        began = time.monotonic()
        for proc in (self._scheduler, self._kubelet):
            if proc is not None:
                proc.stop(grace=5.0)
        if self._services is not None:
            self._services.stop()
        if self._containerd is not None and self._containerd.running():
            endpoint = f"unix://{self.paths.socket}"
            _run(str(self.crictl), "-r", endpoint, "-i", endpoint, "rmp", "-af",
                 check=False, timeout=60)
            self._containerd.stop(grace=10.0)
        for table, chain, *rule in reversed(self._rules):
            _run("iptables", "-t", table, "-D", chain, *rule, check=False)
        self._rules.clear()
        keep = os.environ.get("SHARDMESH_KEEP_NODE", "") not in ("", "0")
        if not keep:
            clean_stale(self.paths, crictl=None)
        self.timings["teardown"] = time.monotonic() - began
        self._unlock()

    # ---- images -----------------------------------------------------------------------

    def import_image(self, tar: Path) -> None:
        self._ctr("images", "import", str(tar), timeout=300)

    def has_image(self, ref: str) -> bool:
        return bool(self._ctr("images", "ls", "-q", f"name=={ref}", check=False).stdout.strip())

    def tag_image(self, source: str, target: str) -> None:
        self._ctr("images", "tag", "--force", source, target)

    def images(self) -> list[str]:
        return self._ctr("images", "ls", "-q").stdout.split()

    # ---- helpers ----------------------------------------------------------------------

    def logs(self) -> dict[str, Path]:
        return {p.name: p.log for p in (self._containerd, self._kubelet, self._scheduler)
                if p is not None}

    def describe(self) -> str:
        return "\n".join(f"--- {name} ({path}):\n{tail(path, 25)}"
                         for name, path in self.logs().items())

    def _ctr(self, *args: str, check: bool = True, timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:
        return _run("ctr", "--address", str(self.paths.socket), "-n", NAMESPACE, *args,
                    check=check, timeout=timeout)

    def _kubeconfig(self, stem: str, user: str, pair: KeyPair) -> Path:
        return write_kubeconfig(self.paths.run / f"{stem}.kubeconfig", self.cp.server,
                                self.cp.ca_cert(), user, pair)

    def _bridge_up(self) -> None:
        clash = _run("ip", "-4", "route", "show", "to", "root", SUBNET).stdout.strip()
        if clash:
            raise NodeError(f"the pod subnet {SUBNET} is already routed on this host: {clash}")
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{GATEWAY}/{SUBNET.split('/')[1]}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # The DNAT to the API server on 127.0.0.1 needs this (on our bridge only).
        Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet").write_text("1\n")
        self._add_rule(["filter", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"])

    def _add_rule(self, rule: list[str]) -> None:
        table, chain, *spec = rule
        _run("iptables", "-t", table, "-I", chain, *spec)
        self._rules.append(rule)

    def _node_ready(self) -> bool:
        result = self.cp.kubectl("get", "node", NODE_NAME, "-o",
                                 "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                                 check=False)
        return result.stdout.strip() == "True"

    def _wait(self, done: Callable[[], bool], what: str, proc: ManagedProcess,
              timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if not proc.running():
                raise NodeError(f"while waiting for {what}: {proc.describe_failure()}")
            if time.monotonic() > deadline:
                raise NodeError(f"timed out after {timeout:.0f}s waiting for {what}:\n"
                                f"{self.describe()}")
            time.sleep(0.2)


@contextlib.contextmanager
def running_node(cp: ControlPlane) -> Iterator[Node]:
    node = Node(cp)
    try:
        node.start_runtime()
        node.start_kubelet()
        yield node
    finally:
        node.stop()
