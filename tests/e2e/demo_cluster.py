"""``make demo-cluster``: the end-to-end story, narrated, on a local Kubernetes control plane.

The same building blocks as ``test_end_to_end`` (see ``story``): a throw-away
etcd + kube-apiserver + kube-controller-manager on 127.0.0.1, ``manifests/``
applied for real, the webhook run locally, the injected sidecar started from
the stored client pod, and deposits for 1,000 accounts while the StatefulSet
scales, a replica goes unready, one is killed and the apiserver restarts.

It exits 0 only if every claim held (zero 409s, one home per account per
epoch, 503 + Retry-After only for the keys of a replica that is down), and it
stops and removes everything it started either way.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.cluster import binaries
from tests.cluster.controlplane import ControlPlane, ControlPlaneSettings
from tests.cluster.kubelet import Kubelet
from tests.e2e import podspec
from tests.e2e.story import (
    ACCOUNTS,
    STATEFULSET,
    STRATEGY,
    Injection,
    Round,
    Story,
    describe,
    table,
)
from tests.e2e.story import summary as round_summary
from tests.e2e.verdicts import moved

ORDINAL = 1  # the replica made unready, then killed


class DemoFailure(Exception):
    """A claim of the demo did not hold; the message says which."""


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say()
    say(f"== {text}")


def require(result: Round) -> Round:
    say(f"  {result.title}: {round_summary(result)}")
    if result.violations:
        shown = "\n  ".join(result.violations[:10])
        raise DemoFailure(f"{result.title}: {len(result.violations)} violations, e.g.:\n  {shown}")
    return result


def show_injection(found: Injection) -> None:
    heading("What the webhook did (pods as the API server stored them)")
    pod = found.client_pod
    container, native = podspec.find_container(pod)
    where = "initContainers (native sidecar)" if native else "containers"
    say(f"  client pod {pod['metadata']['name']}: {', '.join(found.sidecar_names)}")
    say(f"    + {podspec.SIDECAR} in {where}: {' '.join(podspec.argv(container))}")
    say(f"    + env: {', '.join(e['name'] for e in container.get('env') or [])}; mounts: "
        f"{', '.join(m['mountPath'] for m in container.get('volumeMounts') or [])}")
    say(f"    + shard.io/status: {pod['metadata']['annotations'].get('shard.io/status')}")
    for backend in found.backend_pods:
        names = [c["name"] for c in backend["spec"]["containers"]]
        say(f"  {backend['metadata']['name']}: {', '.join(names)} (shard.io/inject: \"false\")")
    if found.sidecar_names.count(podspec.SIDECAR) != 1:
        raise DemoFailure(f"expected one {podspec.SIDECAR} in the client pod: "
                          f"{found.sidecar_names}")


def scale(story: Story, before: int, after: int) -> None:
    heading(f"Scaling {STATEFULSET} {before} -> {after}")
    seconds = story.scale(after)
    say(f"  the sidecar's /_shard/routes showed N={after}, all ready, after {seconds:.1f}s")
    say(f"  {moved(ACCOUNTS, STRATEGY, before, after)} of {len(ACCOUNTS)} accounts change owner "
        f"({STRATEGY}); with no data migration they start afresh on their new replica")
    require(story.deposit_round(f"N={after}", after))


def outage(story: Story, what: str, count: int) -> None:
    assert story.replicas is not None
    pod = story.replicas.pod_name(ORDINAL)
    if what == "unready":
        heading(f"{pod} fails its readiness probe")
        story.replicas.hold_down(ORDINAL)
    else:
        heading(f"{pod} is killed (process stopped, pod deleted; its replacement not ready)")
        story.replicas.kill(ORDINAL)
    story.wait_for_map(count, down=frozenset({ORDINAL}))
    result = require(story.deposit_round(f"{pod} {what}", count, frozenset({ORDINAL})))
    down = next(a for a in result.answers if a.status == 503)
    up = next(a for a in result.answers if a.status == 200)
    say(f"  account {down.account} (ordinal {ORDINAL}): {describe(down)}")
    say(f"  account {up.account} (ordinal {up.shard_ordinal}): HTTP {up.status}, "
        f"answered by {up.body['replica']}")
    story.replicas.release(ORDINAL)
    seconds = story.wait_for_map(count)
    say(f"  {pod} ready again; the sidecar routes to it again after {seconds:.1f}s")


def run(story: Story, shown: int) -> None:
    heading("Installing shardmesh and an app (kubectl apply --server-side -k manifests/)")
    found = story.set_up(replicas=3)
    show_injection(found)

    heading(f"Deposits for {len(ACCOUNTS)} accounts through the sidecar "
            f"(N=3, strategy {STRATEGY})")
    first = require(story.deposit_round("N=3", 3))
    for line in table(first, shown):
        say(line)
    say(f"  ... and {len(ACCOUNTS) - shown} more accounts")

    scale(story, 3, 4)
    scale(story, 4, 2)
    outage(story, "unready", 2)
    outage(story, "killed", 2)
    require(story.deposit_round("after the replacement", 2))

    heading("kube-apiserver restarts while deposits flow")
    result, restart = story.restart_apiserver_under_traffic(2)
    require(result)
    say(f"  the apiserver was back after {restart:.1f}s; the sidecar kept its last map")
    scale(story, 2, 3)

    heading("Proof, from the replicas' own ledgers")
    total = sum(len(r.answers) for r in story.rounds)
    conflicts = sum(a.status == 409 for r in story.rounds for a in r.answers)
    misrouted = story.misrouted()
    say(f"  {total} requests in {len(story.rounds)} epochs; 409 answers: {conflicts}; "
        f"requests any replica refused as not its own: {misrouted}")
    if conflicts or misrouted:
        raise DemoFailure(f"{conflicts} 409 answers, {misrouted} misrouted requests")
    say("  in every epoch each account lived on exactly one replica: its owner")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.demo_cluster",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--show", type=int, default=12, help="rows of the table to print")
    args = parser.parse_args(argv)
    try:
        bins = binaries.locate(build_if_missing=False)
    except binaries.MissingBinaries as exc:
        hint = "" if "make cluster-bins" in str(exc) else " (run 'make cluster-bins' first)"
        print(f"demo-cluster: {exc}{hint}", file=sys.stderr)
        return 1
    began = time.monotonic()
    heading("Starting a control plane on 127.0.0.1 (etcd, kube-apiserver, "
            "kube-controller-manager)")
    cp = ControlPlane(bins, ControlPlaneSettings.from_env())
    try:
        say(f"  ready in {cp.start():.1f}s at {cp.server} ({bins.directory.name})")
        kubelet = Kubelet(cp)
        try:
            with tempfile.TemporaryDirectory(prefix="shardmesh-demo-") as tmp, \
                    Story(cp, kubelet, Path(tmp), say=lambda text: say(f"  {text}")) as story:
                run(story, args.show)
        finally:
            kubelet.stop()
    except (DemoFailure, AssertionError, RuntimeError) as failure:
        # A claim that did not hold, a wait that timed out, or a process that did not start:
        # the message says which (and carries the log of the process at fault).
        print(f"\ndemo-cluster FAILED: {type(failure).__name__}: {failure}", file=sys.stderr)
        return 1
    finally:
        cp.stop()
    heading(f"Done in {time.monotonic() - began:.0f}s: every request reached its owner; "
            "the control plane and every process are stopped, their files removed.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
