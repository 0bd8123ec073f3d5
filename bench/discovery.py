"""Benchmark: discovery for N sidecars (default 1,000), directory mode vs direct mode.

Not a test. On the test control plane (tests/cluster: etcd, kube-apiserver,
kube-controller-manager; pods made Running and Ready by the simulated kubelet,
tests/cluster/kubelet.py, in a process of its own) with one StatefulSet
``bench/web``, it runs two phases, each on a freshly started API server:

- **directory**: ``shardmesh directory`` and N light subscribers speaking the
  sidecar's protocol (``directory.client.stream``) on one uvloop loop in one
  client process, plus one direct watch beside them during the rollout, the
  reference for the directory's extra hop;
- **direct**: N copies of the sidecar's own direct-watch code, not a stand-in:
  ``sidecar.discovery.RouteWatch`` (two threads each: the StatefulSet by name
  with ``fieldSelector=metadata.name=web``, its pods by the StatefulSet's
  ``spec.selector``; its backoff and relist spread), each with its own API
  client, split over ``--direct-processes`` client processes.

Every client logs in with a token of its own (a TokenRequest each, as every
pod has), so the API server (direct) and the directory (TokenReview) see N
identities. Per phase: the clients start at 200/s until all have a map; a
scale event (replicas + 1) is timed to every client, from the scale call to
its first map with the new count; then a rolling restart of the pods
(``kubectl.kubernetes.io/restartedAt``) is run to completion, and the bench
waits until no client has received a map for 3 s (the API server's CPU,
requests and watch events "during the rollout" are counted from the scale
call to the end of that wait); then the API server is
restarted and the LIST requests it serves for pods and StatefulSets
(namespace scope) are counted until they stop, minus those of a restart with
no clients (controller-manager and the simulated kubelet). API-server figures
come from its own ``/metrics`` (``apiserver_longrunning_requests{verb="WATCH"}``,
``apiserver_request_total``, ``apiserver_watch_events_total``, ``process_*``).

The clients are Python processes on the same 2 cores as the control plane:
their CPU (a row of the table) competes with the API server's, which slows
the direct-mode rollout and its propagation far more than it would with one
sidecar per pod on many nodes. Expect noise; ``make bench-discovery`` runs it
under ``nice``.

    .venv/bin/python bench/discovery.py [--subscribers 1000] [--direct-processes 8]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client  # noqa: E402

from bench import apimetrics  # noqa: E402
from bench.discovery_fleets import DirectFleet, Tally, WithReference  # noqa: E402
from bench.discovery_report import Phase, table  # noqa: E402
from bench.discovery_setup import (  # noqa: E402
    NS,
    STS,
    create_workload,
    issue_tokens,
    write_kubeconfigs,
)
from bench.fleet_process import FleetProcess, Fleets  # noqa: E402
from bench.kubelet_process import KubeletProcess  # noqa: E402
from bench.procstat import proc_cpu_s, proc_rss_mb  # noqa: E402
from tests.cluster import binaries  # noqa: E402
from tests.cluster.controlplane import ControlPlane, ControlPlaneSettings  # noqa: E402
from tests.cluster.waiting import wait_for  # noqa: E402
from tests.directory.harness import DirectoryProcess  # noqa: E402

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"  # what `kubectl rollout restart` sets
RELIST_QUIET_S = 10  # LIST counts unchanged this long after a restart: the relists are over
FANOUT = "shardmesh_directory_propagation_seconds"  # the directory's API event -> write
T = TypeVar("T", bound=Tally)
CAUGHT_UP_S = 3  # no client got a new map for this long: the fleet has caught up


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


class DirectoryTally(WithReference):
    """Also reads the directory's own propagation histogram around the rollout."""

    def __init__(self, fleet: Tally, reference: DirectFleet, d: DirectoryProcess) -> None:
        super().__init__(fleet, reference)
        self.d = d
        self.before: list[apimetrics.Sample] = []
        self.after: list[apimetrics.Sample] = []

    def scrape(self) -> list[apimetrics.Sample]:
        return apimetrics.parse(self.d.get("/metrics")[1])

    def before_rollout(self) -> None:
        super().before_rollout()
        self.before = self.scrape()

    def before_restart(self) -> None:
        self.after = self.scrape()
        super().before_restart()


@dataclass
class Bench:
    cp: ControlPlane
    workdir: Path
    tokens: list[str]  # n + 1: the last is the reference watch's
    kubeconfigs: list[Path]
    n: int
    direct_processes: int
    baseline_lists: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        api = self.cp.api_client()
        self.apps, self.core = client.AppsV1Api(api), client.CoreV1Api(api)

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def replicas(self) -> int:
        return int(self.apps.read_namespaced_stateful_set(STS, NS).spec.replicas)

    def restart_and_count_lists(self, fleet: Tally | None = None) -> dict[str, float]:
        """Restart the API server; LISTs of pods and StatefulSets it serves until they, and
        the clients' watch restarts, have stopped changing for RELIST_QUIET_S."""
        began = time.monotonic()
        self.cp.restart_apiserver()
        seen: object = None
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < RELIST_QUIET_S or time.monotonic() - began < 20:
            time.sleep(1)
            samples = apimetrics.scrape(self.cp)
            counts = {r: apimetrics.lists(samples, r) for r in ("pods", "statefulsets")}
            now = (counts, fleet.restarts() if fleet else None)
            if now != seen:
                seen, quiet_since = now, time.monotonic()
        return counts

    def rollout(self, fleet: Tally, phase: Phase) -> None:
        """Scale by one (timed to every client), then restart every pod, to completion."""
        target = self.replicas() + 1
        before = apimetrics.scrape(self.cp)
        cpu0 = fleet.cpu_s()
        fleet.expect(target)
        started = phase.scale_at = time.monotonic()
        self.apps.patch_namespaced_stateful_set_scale(STS, NS, {"spec": {"replicas": target}})
        wait_for(lambda: len(fleet.arrivals()) == fleet.n, f"{fleet.n} clients to see "
                 f"{target} replicas", timeout=120, interval=0.05)
        phase.delays = sorted(t - started for t in fleet.arrivals())
        when = datetime.datetime.now(datetime.UTC).isoformat()
        self.apps.patch_namespaced_stateful_set(STS, NS, {"spec": {"template": {"metadata": {
            "annotations": {RESTARTED_AT: when}}}}})
        wait_for(lambda: self.rolled_out(target, when), "the rolling restart", timeout=180,
                 interval=0.2)
        phase.rollout_s = time.monotonic() - started
        # A client still busy with the rollout's events would meet the restart late.
        wait_for(lambda: time.monotonic() - fleet.last_news() >= CAUGHT_UP_S,
                 "the clients to have every map of the rollout", timeout=300, interval=0.5)
        phase.caught_up_s = fleet.last_news() - started
        cpu = fleet.cpu_s()
        phase.client_cpu_s = None if cpu is None or cpu0 is None else cpu - cpu0
        after = apimetrics.scrape(self.cp)
        phase.window_s = time.monotonic() - started
        phase.rollout_requests = apimetrics.requests(after) - apimetrics.requests(before)
        phase.rollout_events = apimetrics.watch_events(after) - apimetrics.watch_events(before)
        phase.api_cpu_rollout = apimetrics.cpu_seconds(after) - apimetrics.cpu_seconds(before)
        phase.api_rss_mb = apimetrics.rss_mb(after)

    def rolled_out(self, target: int, restarted_at: str | None = None) -> bool:
        """All ``target`` pods are of the current template (restarted at ``restarted_at``),
        Ready, and the StatefulSet controller says so too."""
        sts = self.apps.read_namespaced_stateful_set(STS, NS)
        s = sts.status
        if not (s.observed_generation == sts.metadata.generation
                and s.current_revision == s.update_revision
                and s.updated_replicas == target and s.ready_replicas == target):
            return False
        pods = self.core.list_namespaced_pod(NS, label_selector=f"app={STS}").items
        return len(pods) == target and all(
            (p.metadata.annotations or {}).get(RESTARTED_AT) == restarted_at
            and p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            for p in pods)

    def run_phase(self, phase: Phase, start: Callable[[], T], stop: Callable[[T], None]
                  ) -> None:
        """Start the clients, time their sync, the rollout, the relists after a restart."""
        before = apimetrics.scrape(self.cp)
        phase.watches_before = apimetrics.watches(before)
        began = time.monotonic()
        fleet = start()
        try:
            wait_for(lambda: fleet.synced() == fleet.n, f"{fleet.n} clients to get a map",
                     timeout=300, interval=0.5)
            phase.sync_s = time.monotonic() - (fleet.start_time() or began)
            synced = apimetrics.scrape(self.cp)
            phase.api_cpu_connect = (apimetrics.cpu_seconds(synced)
                                     - apimetrics.cpu_seconds(before))
            self.log(f"{phase.mode}: {fleet.n} clients synced in {phase.sync_s:.1f} s")
            time.sleep(5)
            phase.watches_open = apimetrics.watches(apimetrics.scrape(self.cp))
            fleet.before_rollout()
            self.rollout(fleet, phase)
            fleet.before_restart()
            self.log(f"{phase.mode}: rollout done in {phase.rollout_s:.1f} s; "
                     "restarting the API server")
            lists = self.restart_and_count_lists(fleet)
            phase.relists = {k: v - self.baseline_lists.get(k, 0) for k, v in lists.items()}
        finally:
            stop(fleet)

    def directory_phase(self) -> Phase:
        phase = Phase("directory", self.n)
        d = DirectoryProcess(self.cp, "bench-home", self.workdir).start(
            "--heartbeat-s", "10", "--log-level", "warning")
        assert d.proc is not None
        pid, cpu0 = d.proc.pid, proc_cpu_s(d.proc.pid)

        def start() -> DirectoryTally:
            fleet = FleetProcess({"mode": "directory", "url": d.url, "ca": d.ca.decode(),
                                  "tokens": self.tokens[:self.n], "namespace": NS,
                                  "statefulset": STS}, self.workdir)
            return DirectoryTally(fleet, DirectFleet(self.kubeconfigs[self.n:], NS, STS), d)

        def stop(tally: DirectoryTally) -> None:
            phase.directory_rss_mb = proc_rss_mb(pid)
            phase.directory_cpu_s = proc_cpu_s(pid) - cpu0
            if tally.reference.arrivals():
                phase.reference_ms = (tally.reference.arrivals()[0] - phase.scale_at) * 1000
            if tally.after:
                b, a = tally.before, tally.after
                phase.fanout_ms = (ms(apimetrics.mean(b, a, FANOUT)),
                                   ms(apimetrics.quantile_bound(b, a, FANOUT, 0.5)),
                                   ms(apimetrics.quantile_bound(b, a, FANOUT, 0.99)))
            tally.fleet.stop()
            tally.reference.stop()  # if the phase failed before its restart

        try:
            self.run_phase(phase, start, stop)
        finally:
            d.stop()
        return phase

    def direct_phase(self) -> Phase:
        phase = Phase("direct", self.n)

        def start() -> Fleets:
            paths = [str(p) for p in self.kubeconfigs[:self.n]]
            k = self.direct_processes
            return Fleets([FleetProcess({"mode": "direct", "namespace": NS, "statefulset": STS,
                                         "part": i, "kubeconfigs": paths[i::k]}, self.workdir)
                           for i in range(min(k, self.n))])

        def stop(fleet: Fleets) -> None:
            phase.watch_restarts = fleet.restarts()
            fleet.stop()

        self.run_phase(phase, start, stop)
        return phase


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--direct-processes", type=int, default=8,
                    help="processes the direct-mode watchers are split over (default 8)")
    ap.add_argument("--modes", default="directory,direct",
                    help="comma-separated phases to run, in order (default: both)")
    args = ap.parse_args()
    # A thousand watches each log their broken connection: counted instead (watch_restarts).
    logging.getLogger("shardmesh.sidecar.discovery").setLevel(logging.CRITICAL)
    bins = binaries.locate(build_if_missing=False)
    with ControlPlane(bins, ControlPlaneSettings()) as cp, \
            tempfile.TemporaryDirectory() as tmp, \
            KubeletProcess(cp.kubeconfig, NS):
        create_workload(cp)
        tokens = issue_tokens(cp, args.subscribers + 1)
        bench = Bench(cp, Path(tmp), tokens,
                      write_kubeconfigs(cp, tokens, Path(tmp) / "clients"), args.subscribers,
                      args.direct_processes)
        wait_for(lambda: bench.rolled_out(2), "the StatefulSet's 2 pods", timeout=60)
        bench.log(f"{len(tokens)} client tokens issued; restarting the API server with no "
                  "clients (the baseline of LISTs)")
        bench.baseline_lists = bench.restart_and_count_lists()
        phases = []
        for mode in args.modes.split(","):
            bench.log(f"{mode} mode: starting {args.subscribers} clients")
            phases.append(bench.directory_phase() if mode == "directory"
                          else bench.direct_phase())
        print()
        print(f"baseline LISTs after an API-server restart with no clients: "
              f"{bench.baseline_lists}")
        print(table(phases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
