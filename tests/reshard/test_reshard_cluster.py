"""``shardmesh reshard`` against the real control plane, with real handoffs through the
API server's pod proxy to accounts backends that move their data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardmesh.reshard_cmd import Reshard, main, settings_from
from shardmesh.reshard_kube import Kube, load_client
from shardmesh.reshard_plan import excess
from sidecar import slots as sl
from sidecar.shardfn import ordinal_for
from tests.cluster import netns
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kubelet import Kubelet
from tests.cluster.waiting import wait_for
from tests.reshard.world import SLOTS, STS, World, world

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(
    netns.missing() is not None and os.environ.get("CI") != "true",
    reason=f"pod network: {netns.missing()}")]

ACCOUNTS = [str(n) for n in range(300)]
INITIAL = str(sl.initial(SLOTS, 0, 3))


@pytest.fixture
def w(control_plane: ControlPlane, namespace: str, kubelet: Kubelet,
      tmp_path: Path) -> Iterator[World]:
    with world(control_plane, namespace, kubelet, tmp_path) as built:
        built.start_backends(INITIAL)
        built.create(3, {sl.SLOTS: str(SLOTS)})
        yield built


def reshard(w: World, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([STS, "-n", w.namespace, "--kubeconfig", str(w.cp.kubeconfig), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def initialised(w: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert reshard(w, capsys, "--init")[0] == 0
    smap = w.slot_map()
    for account in ACCOUNTS:
        assert w.deposit(account, smap) == 200
    w.scale(4)


def assert_accounts_follow(w: World, smap: sl.SlotMap) -> None:
    """Every account is on exactly one backend: the one its slot's owner names; none lost."""
    held = w.holdings()
    assert sorted(held) == sorted(ACCOUNTS)
    wrong = {a: o for a, o in held.items()
             if o != [smap.owner(ordinal_for(a, "modulo", SLOTS))]}
    assert not wrong
    assert sum(sum(w.state(o)["accounts"].values()) for o in w.backends) == len(ACCOUNTS)


def test_init_dry_run_and_a_three_to_four_reshard(w: World,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = reshard(w, capsys, "--to", "3")
    assert code == 1  # nothing to balance before --init
    code, out, _ = reshard(w, capsys, "--init")
    assert code == 0 and "initial assignment 0-21:0,22-42:1,43-63:2 at epoch 1" in out
    assert reshard(w, capsys, "--init")[0] == 0  # the same assignment: nothing to do
    smap = w.slot_map()
    assert (smap.epoch, str(smap.assignment)) == (1, INITIAL)
    for account in ACCOUNTS:
        assert w.deposit(account, smap) == 200
    w.scale(4)

    before = w.read()
    code, out, _ = reshard(w, capsys, "--to", "4", "--dry-run")
    assert code == 0 and "16 slots in 3 batches" in out
    rows = [line.split() for line in out.splitlines()]
    assert ["16-21", "0", "3"] in rows and ["38-42", "1", "3"] in rows
    assert ["59-63", "2", "3"] in rows
    after = w.read()
    assert after["resourceVersion"] == before["resourceVersion"]  # nothing written

    code, out, err = reshard(w, capsys, "--to", "4")
    assert code == 0, err
    smap = w.slot_map()
    assert smap.assignment is not None and not smap.migrating
    assert smap.assignment.counts() == {0: 16, 1: 16, 2: 16, 3: 16}
    assert smap.epoch == 1 + 2 * 3
    moved = [s for s in range(SLOTS) if smap.owner(s) != sl.initial(SLOTS, 0, 3).owner(s)]
    assert len(moved) == excess(sl.initial(SLOTS, 0, 3), 0, 4) == 16
    assert sl.LEASE not in w.read()["annotations"]  # released
    # each old owner got one handoff, at the epoch of its flip
    handoffs = {o: w.state(o)["table"]["handoffs"] for o in range(3)}
    assert handoffs == {
        0: [{"slots": list(range(16, 22)), "to": 3, "epoch": 3}],
        1: [{"slots": list(range(38, 43)), "to": 3, "epoch": 5}],
        2: [{"slots": list(range(59, 64)), "to": 3, "epoch": 7}]}
    assert_accounts_follow(w, smap)
    # the old owner now answers 421 with its epoch for a moved account
    account = next(a for a in ACCOUNTS if ordinal_for(a, "modulo", SLOTS) == 16)
    status, body = w.call(0, "POST", f"/accounts/{account}/deposit", {
        "X-Shard-Slot": "16", "X-Shard-Slots": str(SLOTS), "X-Shard-Epoch": "1",
        "X-Shard-Ordinal": "0"})
    assert status == 421 and body["epoch"] == 3
    assert w.deposit(account, smap) == 200

    # balanced: a rerun does nothing; --init now refuses the different assignment
    code, out, _ = reshard(w, capsys, "--to", "4")
    assert code == 0 and w.slot_map().epoch == 7
    code, _, err = reshard(w, capsys, "--init")
    assert code == 1 and "already '0-15:0,16-21:3" in err


def test_a_concurrent_writer_makes_it_read_again(w: World,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    initialised(w, capsys)
    writes: list[str] = []

    class Racing(Kube):
        def write(self, annotations: object, resource_version: str) -> str:
            if len(writes) in (0, 2):  # someone else writes first, twice during the run
                self.apps.patch_namespaced_stateful_set(STS, w.namespace, {"metadata": {
                    "annotations": {"example.com/touched": str(len(writes))}}})
            writes.append(resource_version)
            return super().write(annotations, resource_version)  # type: ignore[arg-type]

    settings = settings_from([STS, "-n", w.namespace, "--to", "4"])
    lines: list[str] = []
    kube = Racing(load_client(str(w.cp.kubeconfig)), w.namespace, STS)
    Reshard(settings, kube, lines.append).run()
    assert sum("conflict: the statefulset changed meanwhile" in line for line in lines) == 2
    smap = w.slot_map()
    assert smap.epoch == 7 and smap.assignment is not None
    assert w.read()["annotations"]["example.com/touched"] == "2"  # the other write survived
    assert_accounts_follow(w, smap)


def test_lease_refuses_expires_and_force_takes_over(w: World,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    initialised(w, capsys)
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))
    w.apps.patch_namespaced_stateful_set(STS, w.namespace, {"metadata": {"annotations": {
        sl.LEASE: f"holder=other@box/1/aa,expires={later}"}}})
    code, _, err = reshard(w, capsys, "--to", "4")
    assert code == 1 and "another reshard holds the lease (holder=other@box/1/aa" in err
    assert w.slot_map().epoch == 1  # nothing moved
    earlier = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    w.apps.patch_namespaced_stateful_set(STS, w.namespace, {"metadata": {"annotations": {
        sl.LEASE: f"holder=other@box/1/aa,expires={earlier}"}}})
    code, out, _ = reshard(w, capsys, "--to", "4", "--batch", "100", "--holder", "me")
    assert code == 0 and "lease taken by me (the last holder's lease expired)" in out
    assert w.slot_map().epoch == 7
    # held again by someone alive: --force takes over at once
    w.apps.patch_namespaced_stateful_set(STS, w.namespace, {"metadata": {"annotations": {
        sl.LEASE: f"holder=other@box/1/aa,expires={later}"}}})
    w.scale(4)
    code, out, _ = reshard(w, capsys, "--to", "2", "--force", "--holder", "me")
    # --to 2 with 4 replicas: scaling in comes after, so it moves 3's slots to 0 and 1
    assert code == 0 and "lease taken by me (--force)" in out
    smap = w.slot_map()
    assert smap.assignment is not None and smap.assignment.counts() == {0: 32, 1: 32}
    assert_accounts_follow(w, smap)


def test_killed_mid_batch_resumes_at_the_same_epoch(w: World,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    initialised(w, capsys)
    w.backends[0].send_signal(signal.SIGSTOP)  # the first batch's source hangs in its handoff
    first = subprocess.Popen([sys.executable, "-m", "shardmesh", "reshard", STS, "-n",
                              w.namespace, "--kubeconfig", str(w.cp.kubeconfig), "--to", "4"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: w.slot_map().migrating, "the first batch in flight", timeout=60)
        time.sleep(1.5)  # the handoff request is at the stopped backend
        published = w.slot_map()
    finally:
        first.kill()
        output = first.communicate()[0].decode()
        w.backends[0].send_signal(signal.SIGCONT)
    assert str(published.migrating[0]) == "16-21:0>3" and published.epoch == 2, output
    assert w.slot_map() == published  # the dead run flipped nothing
    code, out, err = reshard(w, capsys, "--to", "4", "--force")
    assert code == 0, err
    assert "handoff 16-21 0 -> 3 at epoch 3: 200" in out
    handoffs = w.state(0)["table"]["handoffs"]
    print(f"handoffs seen by ordinal 0: {handoffs}")
    # the dead run's request may or may not have reached the backend; either way it
    # carried the same epoch as the resumed one
    assert 1 <= len(handoffs) <= 2 and all(h == {"slots": list(range(16, 22)), "to": 3, "epoch": 3}
                            for h in handoffs), handoffs
    smap = w.slot_map()
    assert smap.epoch == 7 and smap.assignment is not None
    assert smap.assignment.counts() == {0: 16, 1: 16, 2: 16, 3: 16}
    assert_accounts_follow(w, smap)


def test_refuses_unready_pods_unscaled_targets_and_foreign_slots(
        w: World, capsys: pytest.CaptureFixture[str]) -> None:
    initialised(w, capsys)
    code, _, err = reshard(w, capsys, "--to", "5")
    assert code == 1 and "has 4 replicas" in err and "scale it out first" in err
    w.kubelet.set_ready(w.namespace, f"{STS}-3", False)
    code, _, err = reshard(w, capsys, "--to", "4")
    assert code == 1 and f"pod {w.namespace}/{STS}-3 (ordinal 3)" in err and "not Ready" in err
    assert w.slot_map().epoch == 1 and not w.slot_map().migrating
    w.kubelet.set_ready(w.namespace, f"{STS}-3", True)
    # a hand-edited map that gives ordinal 0 slots it never had: the handoff says 409
    w.apps.patch_namespaced_stateful_set(STS, w.namespace, {"metadata": {"annotations": {
        sl.ASSIGNMENT: "0-11:1,12-42:0,43-63:2"}}})
    code, _, err = reshard(w, capsys, "--to", "4")
    assert code == 1 and "refused the handoff" in err and "409" in err
    assert "slot 28 was never owned by ordinal 0" in err
    assert w.slot_map().migrating  # left in flight for a human to look at
