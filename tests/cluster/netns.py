"""A network namespace that plays a pod's network, so a test server can be a Service endpoint.

Why it exists: the test control plane has no nodes and no kube-proxy, and
EndpointSlice validation refuses loopback addresses, so a server on 127.x can
be reached by URL but never through a Service. A network namespace joined to
the host by a veth pair gives a process a real address of its own
(``pod_ip``, like a pod's) that the API server, on the host, can reach.

Rules:
- It needs root and iproute2's ``ip``; :func:`missing` says what is absent.
- Names carry this process's pid, and the /30 is one that no interface on the
  machine uses yet, so test runs side by side do not clash. Choosing it and
  taking it (adding the host address) happen under one machine-wide file lock:
  without it, two runs could both find the same /30 free.
- :func:`pod_network` always deletes the veth pair and the namespace on the
  way out, failure or not; namespaces left by a killed test run (whose pid is
  gone) are deleted by the next one.
- The API server listens on the host's 127.0.0.1 only, which a process in the
  namespace cannot reach: :class:`TcpRelay` forwards ``host_ip:port`` to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import json
import os
import re
import select
import shutil
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass

PREFIX = "shardmesh-"  # namespaces are named shardmesh-<pid>-<n>
POOL = ipaddress.ip_network("10.213.0.0/16")  # /30s are taken from here
LOCK = "/run/lock/shardmesh-netns.lock"  # serialises choosing and taking a /30
_counter = itertools.count()


class NetnsError(RuntimeError):
    """The namespace or its veth pair could not be made."""


def missing() -> str | None:
    """Why this machine cannot make a network namespace (what to get), or None if it can."""
    if shutil.which("ip") is None:
        return "iproute2's 'ip' is not installed (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "creating a network namespace and a veth pair needs root (run pytest as root)"
    return None


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                            check=False)
    if result.returncode != 0:
        raise NetnsError(f"'ip {' '.join(args)}' failed: {result.stderr.strip()}")
    return result.stdout


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of POOL overlapping no address on the host, starting at a pid-derived one."""
    used = [ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
            for link in json.loads(_ip("-j", "-4", "addr", "show"))
            for a in link.get("addr_info", [])]
    subnets = list(POOL.subnets(new_prefix=30))
    start = os.getpid() % len(subnets)
    for subnet in subnets[start:] + subnets[:start]:
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise NetnsError(f"every /30 of {POOL} overlaps an address on this machine")


def _sweep_stale() -> None:
    """Delete namespaces of earlier test runs whose process is gone (killed, not torn down)."""
    for line in _ip("netns", "list").splitlines():
        match = re.match(rf"{PREFIX}(\d+)-\d+\b", line)
        if match and not os.path.exists(f"/proc/{match[1]}"):
            with contextlib.suppress(NetnsError):
                _ip("netns", "delete", line.split()[0])


@dataclass(frozen=True)
class PodNetwork:
    """A network namespace whose one interface has ``pod_ip``; the host side has ``host_ip``."""

    name: str
    host_link: str
    host_ip: str
    pod_ip: str

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """Put this before a command line to run it inside the namespace."""
        return ("ip", "netns", "exec", self.name)


@contextlib.contextmanager
def pod_network() -> Iterator[PodNetwork]:
    """Create the namespace and its veth pair; delete both on exit."""
    _sweep_stale()
    n = next(_counter)
    name = f"{PREFIX}{os.getpid()}-{n}"
    host_link, pod_link = f"shm{os.getpid()}h{n}", f"shm{os.getpid()}p{n}"  # <= 15 chars
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    try:
        with open(LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            host_ip, pod_ip = (str(a) for a in _free_subnet().hosts())
            _ip("netns", "add", name)
            _ip("link", "add", host_link, "type", "veth", "peer", "name", pod_link,
                "netns", name)
            _ip("addr", "add", f"{host_ip}/30", "dev", host_link)
        _ip("link", "set", host_link, "up")
        _ip("-n", name, "addr", "add", f"{pod_ip}/30", "dev", pod_link)
        _ip("-n", name, "link", "set", pod_link, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield PodNetwork(name, host_link, host_ip, pod_ip)
    finally:
        # Deleting one end of a veth pair deletes the other.
        with contextlib.suppress(NetnsError):
            _ip("link", "delete", host_link)
        with contextlib.suppress(NetnsError):
            _ip("netns", "delete", name)


class _Pipe(socketserver.BaseRequestHandler):
    """Copies bytes both ways between the accepted connection and the target."""

    server: TcpRelay

    def handle(self) -> None:
        # poll, not select: late in a long test run this process holds over 1024
        # descriptors, and select() then refuses the socket (ValueError), which
        # closed every relayed connection at once.
        with contextlib.suppress(OSError), \
                socket.create_connection(self.server.target, timeout=10) as upstream:
            peer = {self.request.fileno(): (self.request, upstream),
                    upstream.fileno(): (upstream, self.request)}
            poller = select.poll()
            for fd in peer:
                poller.register(fd, select.POLLIN)
            while not self.server.closing.is_set():
                for fd, _ in poller.poll(500):
                    sock, other = peer[fd]
                    data = sock.recv(65536)
                    if not data:
                        return
                    other.sendall(data)


class TcpRelay(socketserver.ThreadingTCPServer):
    """Listens on ``host`` (any free port) and relays connections from ``only_from`` to
    ``target``; others are closed at once."""

    daemon_threads = True

    def __init__(self, host: str, target: tuple[str, int], only_from: str) -> None:
        super().__init__((host, 0), _Pipe)
        self.target, self.only_from = target, only_from
        self.closing = threading.Event()
        self.port: int = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, args=(0.2,),
                                        name=f"relay-{host}:{self.port}", daemon=True)
        self._thread.start()

    def verify_request(self, request: object, client_address: object) -> bool:
        return isinstance(client_address, tuple) and client_address[0] == self.only_from

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()
