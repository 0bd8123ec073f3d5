"""End to end on the real control plane: manifests, webhook, injected sidecar, backends.

What it proves (details in ``story``):
- ``manifests/`` is accepted by a real kube-apiserver (server-side apply) and the
  webhook, running with the manifests' own service account and RBAC, injects
  the Deployment's pod and skips the opted-out StatefulSet pods;
- the sidecar started from the stored pod (its exact command, env and downward
  API files, its ServiceAccount's token bound by the example RoleBinding) routes
  1,000 accounts so that no request ever reaches a replica that does not own
  its key (zero 409s anywhere) while the StatefulSet scales 3 -> 4 -> 2 -> 3,
  and each account lives on exactly one replica per epoch;
- an unready and a killed replica make only their own keys fail, with 503
  ``shard_unavailable`` + Retry-After;
- a kube-apiserver restart under traffic misroutes nothing and the map follows
  the StatefulSet again afterwards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.controlplane import ControlPlane
from tests.cluster.kubelet import Kubelet
from tests.e2e import podspec
from tests.e2e.story import ROUTE, Round, Story, summary

pytestmark = pytest.mark.cluster


def assert_clean(result: Round) -> None:
    print(f"{result.title}: {summary(result)}")  # shown by pytest when the test fails
    v = result.violations
    assert not v, f"{result.title}: {len(v)} violations, e.g.:\n" + "\n".join(v[:10])


def assert_outage(result: Round, ordinal: int) -> None:
    """Both kinds of answers happened: the check above judged each one."""
    assert_clean(result)
    statuses = result.statuses()
    assert statuses[503] > 0 and statuses[200] > 0, (result.title, statuses)
    assert {a.status for a in result.answers} == {200, 503}, (result.title, statuses)


def assert_injected(client_pod: dict[str, Any], backend_pods: list[dict[str, Any]]) -> None:
    names = [c["name"] for c in (client_pod["spec"].get("initContainers") or [])
             + client_pod["spec"]["containers"]]
    assert names.count(podspec.SIDECAR) == 1, names
    status = json.loads(client_pod["metadata"]["annotations"]["shard.io/status"])
    assert status["routes"] == [ROUTE], status
    assert len(backend_pods) == 3, [p["metadata"]["name"] for p in backend_pods]
    for pod in backend_pods:
        containers = (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]
        assert [c["name"] for c in containers] == ["accounts"], pod["metadata"]["name"]
        assert "shard.io/status" not in (pod["metadata"].get("annotations") or {})


@pytest.mark.timeout(360)
def test_end_to_end(control_plane: ControlPlane, kubelet: Kubelet, tmp_path: Path) -> None:
    began = time.monotonic()
    with Story(control_plane, kubelet, tmp_path,
               say=lambda text: print(f"{time.monotonic() - began:6.1f}s {text}")) as story:
        found = story.set_up(replicas=3)
        assert_injected(found.client_pod, found.backend_pods)
        assert story.replicas is not None
        assert_clean(story.deposit_round("N=3", 3))

        for count in (4, 2):
            story.scale(count)
            assert_clean(story.deposit_round(f"N={count}", count))

        story.replicas.hold_down(1)
        story.wait_for_map(2, down=frozenset({1}))
        assert_outage(story.deposit_round("sharded-svc-1 unready", 2, frozenset({1})), 1)
        story.replicas.release(1)
        story.wait_for_map(2)

        started = len(story.replicas.ledgers)
        story.replicas.kill(1)
        story.wait_for_map(2, down=frozenset({1}))
        assert_outage(story.deposit_round("sharded-svc-1 killed", 2, frozenset({1})), 1)
        story.replicas.release(1)
        story.wait_for_map(2)
        assert len(story.replicas.ledgers) == started + 1, "the recreated pod got a new process"
        assert_clean(story.deposit_round("sharded-svc-1 replaced", 2))

        restart, _ = story.restart_apiserver_under_traffic(2)
        assert_clean(restart)
        assert restart.statuses() == {200: len(restart.answers)}
        story.scale(3)  # the sidecar's watches follow the StatefulSet again
        assert_clean(story.deposit_round("N=3 after the restart", 3))

        assert story.misrouted() == 0
        assert not [a for r in story.rounds for a in r.answers if a.status == 409]

        # Kubernetes mode carries the API client and its watches: the peak RSS
        # over the whole story (thousands of requests, two relists) stays in budget.
        assert story.sidecar is not None
        peak = peak_rss_mib(story.sidecar.proc.pid)
        story.say(f"sidecar peak RSS over the story: {peak:.1f} MiB")
        assert peak <= 60, f"the sidecar's peak RSS was {peak:.1f} MiB, over its 60 MiB budget"


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set, from the kernel's own accounting."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")
