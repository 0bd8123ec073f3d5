"""Cluster DNS and ClusterIP routing for the test node: the part of CoreDNS and kube-proxy
that pods of the node tier need (the sidecar reaches the directory service by its
Service name, ``https://shardmesh-directory.shardmesh-system.svc:443``).

Rules:
- DNS: a UDP server on the bridge's address (the kubelet's ``clusterDNS``) answers A
  queries for ``<service>.<namespace>.svc.cluster.local`` with the Service's ClusterIP,
  NOERROR with no answer for other types of a known name, NXDOMAIN for anything else
  (nothing is forwarded: pods reach no outside name).
- Routing: one nat rule per Service port, ``PREROUTING -i <bridge> -d <ClusterIP>
  --dport <port> -j DNAT --to <pod IP>:<target port>``, to the first ready endpoint
  (no load balancing), refreshed every second from the EndpointSlices. The
  ``kubernetes`` Service is the node's own rule (to the API server on 127.0.0.1).
- Everything stops with :meth:`stop`, which removes its rules (the node's cleanup
  removes any rule on the bridge a killed run left).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import subprocess
import threading
from typing import Any

from kubernetes import client

log = logging.getLogger(__name__)
DOMAIN = "svc.cluster.local"
REFRESH = 1.0


def _name(packet: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    while True:
        length = packet[offset]
        offset += 1
        if length == 0:
            return ".".join(labels).lower(), offset
        labels.append(packet[offset:offset + length].decode(errors="replace"))
        offset += length


def answer(query: bytes, lookup: dict[str, str]) -> bytes:
    """The DNS response to ``query`` from ``lookup`` (FQDN without the dot -> IPv4)."""
    ident, _flags, qdcount = struct.unpack("!HHH", query[:6])
    if qdcount != 1:
        return struct.pack("!HHHHHH", ident, 0x8184, 0, 0, 0, 0)  # not implemented
    name, end = _name(query, 12)
    qtype, _qclass = struct.unpack("!HH", query[end:end + 4])
    question = query[12:end + 4]
    ip = lookup.get(name)
    if ip is None:
        return struct.pack("!HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
    if qtype != 1:
        return struct.pack("!HHHHHH", ident, 0x8180, 1, 0, 0, 0) + question  # no such type
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(ip)
    return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + record


class Services:
    """DNS on ``address``:53 and DNAT rules on ``bridge`` for every Service with a ClusterIP."""

    def __init__(self, api: client.ApiClient, bridge: str, address: str) -> None:
        self.core = client.CoreV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.bridge, self.address = bridge, address
        self.lookup: dict[str, str] = {}
        self.rules: dict[tuple[str, int], str] = {}  # (ClusterIP, port) -> pod IP:port
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((address, 53))
        self._sock.settimeout(0.5)
        self._threads = [threading.Thread(target=self._serve, daemon=True, name="dns"),
                         threading.Thread(target=self._sync_loop, daemon=True, name="proxy")]

    def start(self) -> Services:
        self._sync()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._sock.close()
        for key, target in list(self.rules.items()):
            self._rule("-D", key, target)
        self.rules.clear()

    # ---- DNS --------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(Exception):
                self._sock.sendto(answer(query, dict(self.lookup)), peer)

    # ---- routing ----------------------------------------------------------------------

    def _sync_loop(self) -> None:
        while not self._stop.wait(REFRESH):
            try:
                self._sync()
            except Exception as exc:  # the API server restarting, say: next round
                log.debug("service sync failed: %s", exc)

    def _sync(self) -> None:
        services: Any = self.core.list_service_for_all_namespaces()
        slices: Any = self.discovery.list_endpoint_slice_for_all_namespaces()
        ready: dict[tuple[str, str], list[tuple[str, dict[str, int]]]] = {}
        owner: str
        for s in slices.items:
            owner = str((s.metadata.labels or {}).get("kubernetes.io/service-name"))
            ports = {p.name or "": p.port for p in s.ports or [] if p.port}
            for e in s.endpoints or []:
                if e.conditions is None or e.conditions.ready is not False:
                    for ip in e.addresses:
                        ready.setdefault((s.metadata.namespace, owner), []).append((ip, ports))
        lookup: dict[str, str] = {}
        wanted: dict[tuple[str, int], str] = {}
        for svc in services.items:
            ns, name, ip = svc.metadata.namespace, svc.metadata.name, svc.spec.cluster_ip
            if not ip or ip == "None":
                continue
            lookup[f"{name}.{ns}.{DOMAIN}"] = ip
            if (ns, name) == ("default", "kubernetes"):
                continue
            endpoints = sorted(ready.get((ns, name), []))
            for port in svc.spec.ports or []:
                for pod_ip, ports in endpoints[:1]:
                    target_port = ports.get(port.name or "")
                    if target_port:
                        wanted[(ip, port.port)] = f"{pod_ip}:{target_port}"
        self.lookup = lookup
        for key, target in list(self.rules.items()):
            if wanted.get(key) != target:
                self._rule("-D", key, target)
                del self.rules[key]
        for key, target in wanted.items():
            if key not in self.rules:
                self._rule("-I", key, target)
                self.rules[key] = target

    def _rule(self, action: str, key: tuple[str, int], target: str) -> None:
        ip, port = key
        subprocess.run(["iptables", "-t", "nat", action, "PREROUTING", "-i", self.bridge,
                        "-p", "tcp", "-d", ip, "--dport", str(port), "-j", "DNAT",
                        "--to-destination", target], capture_output=True, check=False,
                       timeout=30)
