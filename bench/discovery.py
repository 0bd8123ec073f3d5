"""Benchmark (first step): N light subscribers of the directory, one scale event.

Not a test: it starts the test control plane (tests/cluster), a StatefulSet
played by the simulated kubelet, and ``shardmesh directory``; opens N streams
(default 1,000) from one asyncio process; scales the StatefulSet and times how
long each subscriber takes to see it, from the scale call. It prints
p50/p99/max propagation, the directory's RSS, its informers, and the watches
open on the API server (``apiserver_longrunning_requests{verb="WATCH"}``).
Direct mode (each sidecar its own watches) is the next step's comparison.

    .venv/bin/python bench/discovery.py [--subscribers 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client  # noqa: E402

from directory.client import stream  # noqa: E402
from tests.cluster import binaries  # noqa: E402
from tests.cluster.controlplane import ControlPlane, ControlPlaneSettings  # noqa: E402
from tests.cluster.kubelet import Kubelet  # noqa: E402
from tests.directory.harness import DirectoryProcess, grant, token  # noqa: E402


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match[1]) / 1024 if match else 0.0


def apiserver_watches(cp: ControlPlane) -> float:
    raw = cp.kubectl("get", "--raw", "/metrics").stdout
    total = 0.0
    for line in raw.splitlines():
        if line.startswith("apiserver_longrunning_requests{") and 'verb="WATCH"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def subscribers(d: DirectoryProcess, bearer: str, ns: str, n: int,
                      scaled: asyncio.Event, seen: list[float], ready: list[int]) -> None:
    endpoint = d.endpoint(bearer)

    async def one() -> None:
        while True:  # the directory's accept backlog can refuse a burst: try again
            try:
                async with contextlib.aclosing(stream(endpoint, ns, "web")) as messages:
                    counted = False
                    async for m in messages:
                        if m["type"] != "snapshot":
                            continue
                        if not counted:
                            ready.append(1)
                            counted = True
                        if m["map"]["replicas"] == 3:
                            seen.append(time.monotonic())
                            return
            except (OSError, TimeoutError):
                await asyncio.sleep(0.2)

    await asyncio.gather(*(one() for _ in range(n)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=1000)
    args = ap.parse_args()
    bins = binaries.locate(build_if_missing=False)
    with ControlPlane(bins, ControlPlaneSettings()) as cp, \
            tempfile.TemporaryDirectory() as tmp:
        api = cp.api_client()
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        for ns in ("bench-home", "bench"):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        kubelet = Kubelet(cp)
        kubelet.watch("bench")
        apps.create_namespaced_stateful_set("bench", {
            "metadata": {"name": "web"},
            "spec": {"serviceName": "web", "replicas": 2, "podManagementPolicy": "Parallel",
                     "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                         "containers": [{"name": "a", "image": "example.invalid/a:1",
                                         "ports": [{"containerPort": 8080}]}]}}}})
        grant(api, "bench", "reader")
        bearer = token(api, "bench", "reader")
        d = DirectoryProcess(cp, "bench-home", Path(tmp)).start("--heartbeat-s", "10",
                                                                 "--log-level", "warning")
        assert d.proc is not None
        watches_before = apiserver_watches(cp)
        try:
            seen: list[float] = []
            ready: list[int] = []

            async def run() -> float:
                scaled = asyncio.Event()
                task = asyncio.create_task(subscribers(d, bearer, "bench", args.subscribers,
                                                       scaled, seen, ready))
                while len(ready) < args.subscribers:
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1)
                print(f"{len(ready)} subscribers have their snapshot; directory RSS "
                      f"{rss_mb(d.proc.pid):.0f} MB; API-server watches "
                      f"{apiserver_watches(cp):g} (before the directory: {watches_before:g})")
                started = time.monotonic()
                await asyncio.to_thread(apps.patch_namespaced_stateful_set_scale, "web",
                                        "bench", {"spec": {"replicas": 3}})
                await asyncio.wait_for(task, 60)
                return started

            import uvloop

            started = uvloop.run(run())
            delays = sorted(t - started for t in seen)
            pick = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]  # noqa: E731
            print(f"scale 2 -> 3 seen by {len(delays)} subscribers: p50 {pick(0.5) * 1000:.0f} ms,"
                  f" p99 {pick(0.99) * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms")
            print(f"directory RSS after: {rss_mb(d.proc.pid):.0f} MB; informers "
                  f"{d.metric('shardmesh_directory_informers'):g}; snapshots sent "
                  f"{d.metric('shardmesh_directory_snapshots_sent_total'):g}")
        finally:
            d.stop()
            kubelet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
