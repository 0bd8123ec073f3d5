"""A slot-mode StatefulSet whose pods are accounts backends the API server can proxy to.

The API server's pod proxy refuses loopback pod IPs, so the backends run in
one network namespace (tests/cluster/netns.py) holding one address per pod;
the host gets a route to each, so both the API server and the test reach them,
and the backends reach each other inside the namespace (the handoff's
transfer). The simulated kubelet reports those addresses as the pods' IPs.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from sidecar import slots as sl
from sidecar.shardfn import ordinal_for
from tests.cluster import netns
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kubelet import Kubelet
from tests.cluster.waiting import wait_for

STS = "ledger"
PORT = 8080
SLOTS = 64
EXTRA = ipaddress.ip_network("10.214.0.0/16")


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def _free_addresses(count: int) -> list[str]:
    used = {a["local"] for link in json.loads(_ip("-j", "-4", "addr", "show"))
            for a in link.get("addr_info", [])}
    base = int(EXTRA.network_address) + (os.getpid() % 200) * 256 + 1
    found = [str(ipaddress.ip_address(base + i)) for i in range(count + len(used))]
    return [a for a in found if a not in used][:count]


@contextlib.contextmanager
def pod_addresses(count: int) -> Iterator[tuple[netns.PodNetwork, list[str]]]:
    """A namespace with ``count`` extra addresses, each routed from the host."""
    with netns.pod_network() as net:
        links = json.loads(_ip("-n", net.name, "-j", "link", "show"))
        [link] = [x["ifname"] for x in links if x["ifname"] != "lo"]
        addresses = _free_addresses(count)
        for address in addresses:
            _ip("-n", net.name, "addr", "add", f"{address}/32", "dev", link)
            _ip("route", "add", f"{address}/32", "dev", net.host_link)  # gone with the link
        yield net, addresses


def statefulset(replicas: int, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": STS, "annotations": annotations},
        "spec": {
            "serviceName": STS, "replicas": replicas, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": STS}},
            "template": {"metadata": {"labels": {"app": STS}}, "spec": {"containers": [{
                "name": "app", "image": "example.invalid/accounts:1",
                "ports": [{"containerPort": PORT}]}]}},
        },
    }


@dataclass
class World:
    cp: ControlPlane
    namespace: str
    kubelet: Kubelet
    net: netns.PodNetwork
    addresses: list[str]
    logs: Path
    backends: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.cp.api_client())

    def start_backends(self, assignment: str) -> None:
        """One accounts backend per address (ordinal i at addresses[i]), seeded with
        ``assignment`` so each knows which slots it never owned."""
        for ordinal in range(len(self.addresses)):
            self.start_backend(ordinal, assignment, wait=False)
        for ordinal in self.backends:
            wait_for(lambda o=ordinal: self.state(o), f"backend {ordinal}", timeout=30)

    def start_backend(self, ordinal: int, assignment: str, wait: bool = True) -> None:
        """The backend of pod ``ordinal``: seeded with ``assignment``, unless its state
        file (the pod's volume, kept like a StatefulSet's claim) is already there."""
        log = (self.logs / f"backend-{ordinal}.log").open("ab")
        self.backends[ordinal] = subprocess.Popen(
            [*self.net.exec_prefix, sys.executable, "-m", "shardmesh", "accounts-backend",
             "--listen", f"{self.addresses[ordinal]}:{PORT}", "--ordinal", str(ordinal),
             "--name", f"{STS}-{ordinal}", "--slots", str(SLOTS), "--assignment", assignment,
             "--state-file", str(self.logs / f"backend-{ordinal}.state")],
            stdout=log, stderr=subprocess.STDOUT)
        if wait:
            wait_for(lambda: self.state(ordinal), f"backend {ordinal}", timeout=30)

    def stop_backend(self, ordinal: int) -> None:
        """Its pod was scaled away: the process goes (its state file stays, like a claim)."""
        proc = self.backends.pop(ordinal)
        proc.terminate()
        proc.wait(10)

    def crash_backend(self, ordinal: int) -> None:
        """SIGKILL, then start again from its state file, as a restarted container would."""
        proc = self.backends.pop(ordinal)
        proc.kill()
        proc.wait(10)
        self.start_backend(ordinal, "")

    def stop(self) -> None:
        for proc in self.backends.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.backends.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def call(self, ordinal: int, method: str, path: str,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.addresses[ordinal], PORT, timeout=10)
        try:
            conn.request(method, path, b"" if method == "POST" else None, headers or {})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def state(self, ordinal: int) -> dict[str, Any]:
        status, body = self.call(ordinal, "GET", "/_state")
        assert status == 200
        state: dict[str, Any] = body
        return state

    def deposit(self, account: str, smap: sl.SlotMap) -> int:
        """A deposit as the sidecar would send it in slot mode (headers included)."""
        slot = ordinal_for(account, "modulo", SLOTS)
        owner = smap.owner(slot)
        assert owner is not None
        status, _ = self.call(owner, "POST", f"/accounts/{account}/deposit", {
            "X-Shard-Slot": str(slot), "X-Shard-Slots": str(SLOTS),
            "X-Shard-Epoch": str(smap.epoch), "X-Shard-Ordinal": str(owner)})
        return status

    def read(self) -> dict[str, Any]:
        sts = json.loads(self.apps.read_namespaced_stateful_set(
            STS, self.namespace, _preload_content=False).data)
        meta: dict[str, Any] = sts["metadata"]
        return meta

    def slot_map(self) -> sl.SlotMap:
        smap = sl.parse(self.read().get("annotations") or {})
        assert smap is not None
        return smap

    def create(self, replicas: int, annotations: dict[str, str]) -> None:
        self.apps.create_namespaced_stateful_set(self.namespace,
                                                 statefulset(replicas, annotations))
        self.wait_pods(replicas)

    def scale(self, replicas: int) -> None:
        self.apps.patch_namespaced_stateful_set_scale(STS, self.namespace,
                                                      {"spec": {"replicas": replicas}})
        self.wait_pods(replicas)

    def wait_pods(self, replicas: int) -> None:
        core = client.CoreV1Api(self.cp.api_client())

        def ready() -> bool:
            pods = core.list_namespaced_pod(self.namespace).items
            good = {p.metadata.name for p in pods if p.status.pod_ip in self.addresses and any(
                c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])}
            return good >= {f"{STS}-{i}" for i in range(replicas)}

        wait_for(ready, f"{replicas} Ready pods of {STS}", timeout=60)

    def holdings(self) -> dict[str, list[int]]:
        """account -> the ordinals whose backend holds it."""
        held: dict[str, list[int]] = {}
        for ordinal in self.backends:
            for account in self.state(ordinal)["accounts"]:
                held.setdefault(account, []).append(ordinal)
        return held


@contextlib.contextmanager
def world(cp: ControlPlane, namespace: str, kubelet: Kubelet, tmp: Path,
          pods: int = 4) -> Iterator[World]:
    with pod_addresses(pods) as (net, addresses):
        for ordinal, address in enumerate(addresses):
            kubelet.assign_ip(namespace, f"{STS}-{ordinal}", address)
        kubelet.watch(namespace)
        w = World(cp, namespace, kubelet, net, addresses, tmp)
        try:
            yield w
        finally:
            w.stop()
