"""The reshard loop over a fake StatefulSet: resumption, leases, conflicts, refusals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from shardmesh.reshard_cmd import Failure, Reshard, settings_from
from shardmesh.reshard_kube import Conflict, HandoffAnswer, PodView, StatefulSetView
from sidecar import slots as sl


class FakeKube:
    def __init__(self, annotations: dict[str, str], replicas: int = 4) -> None:
        self.annotations, self.rv, self.replicas = dict(annotations), 1, replicas
        self.handoffs: list[tuple[str, dict[str, Any]]] = []
        self.unready: set[int] = set()
        self.conflicts = 0  # writes to refuse, as if someone wrote first
        self.answer = 200

    def read(self) -> StatefulSetView:
        return StatefulSetView("ledger", "ns", dict(self.annotations), str(self.rv),
                               self.replicas, 0, 8080)

    def write(self, annotations: Mapping[str, str | None], resource_version: str) -> str:
        if self.conflicts or resource_version != str(self.rv):
            self.conflicts = max(0, self.conflicts - 1)
            self.rv += 1
            raise Conflict("changed")
        for k, v in annotations.items():
            if v is None:
                self.annotations.pop(k, None)
            else:
                self.annotations[k] = v
        self.rv += 1
        return str(self.rv)

    def pod(self, ordinal: int) -> PodView:
        return PodView(f"ledger-{ordinal}", "it is not Ready" if ordinal in self.unready else "",
                       f"10.0.0.{ordinal}")

    def handoff(self, pod: str, port: int, body: Mapping[str, Any],
                timeout: float) -> HandoffAnswer:
        self.handoffs.append((pod, dict(body)))
        return HandoffAnswer(self.answer, "{}")


def job(kube: FakeKube, *args: str) -> tuple[Reshard, list[str]]:
    lines: list[str] = []
    settings = settings_from(["ledger", "--to", "4", "--holder", "me", *args])
    return Reshard(settings, kube, lines.append, clock=lambda: 1_000_000.0), lines  # type: ignore[arg-type]


START = {sl.SLOTS: "64", sl.ASSIGNMENT: "0-21:0,22-42:1,43-63:2", sl.EPOCH: "1"}


def test_resumes_a_batch_in_flight_at_its_published_epoch() -> None:
    kube = FakeKube({**START, sl.EPOCH: "2", sl.MIGRATING: "16-21:0>3"})
    reshard, lines = job(kube)
    reshard.run()
    first = kube.handoffs[0]
    assert first == ("ledger-0", {"slots": list(range(16, 22)), "to": 3, "epoch": 3, "from": 0,
                                  "address": "10.0.0.3:8080"})
    assert [b["epoch"] for _, b in kube.handoffs] == [3, 5, 7]
    assert kube.annotations[sl.EPOCH] == "7" and sl.MIGRATING not in kube.annotations
    assert sl.LEASE not in kube.annotations
    assert lines[-2].startswith("done at epoch 7")
    # the batch found in flight was finished, not begun again
    assert lines[-1] == "steps this run: 2 migrate, 3 handoff, 3 flip, 0 conflict"


def test_conflicts_are_read_again() -> None:
    kube = FakeKube(START)
    kube.conflicts = 3
    reshard, lines = job(kube)
    reshard.run()
    assert sum("conflict:" in line for line in lines) == 3
    assert kube.annotations[sl.EPOCH] == "7"
    assert lines[-1] == "steps this run: 3 migrate, 3 handoff, 3 flip, 3 conflict"


def test_held_lease_refuses_and_force_takes_over() -> None:
    kube = FakeKube({**START, sl.LEASE: "holder=other,expires=2030-01-01T00:00:00Z"})
    reshard, _ = job(kube)
    with pytest.raises(Failure, match="another reshard holds the lease"):
        reshard.run()
    assert kube.annotations[sl.EPOCH] == "1" and not kube.handoffs
    reshard, lines = job(kube, "--force")
    reshard.run()
    assert "lease taken by me (--force)" in lines


def test_unreadable_lease_needs_force() -> None:
    kube = FakeKube({**START, sl.LEASE: "garbage"})
    with pytest.raises(Failure, match="shard.io/reshard-lease.*--force replaces it"):
        job(kube)[0].run()
    job(kube, "--force")[0].run()
    assert kube.annotations[sl.EPOCH] == "7"


def test_refusals_leave_the_map_and_release_the_lease() -> None:
    kube = FakeKube(START)
    kube.unready = {3}
    with pytest.raises(Failure, match=r"pod default/ledger-3 \(ordinal 3\).*not Ready"):
        job(kube)[0].run()
    assert kube.annotations == START  # lease taken, then released; nothing else
    kube.unready = set()
    kube.answer = 409
    with pytest.raises(Failure, match="refused the handoff of slots 16-21 to 3 .409"):
        job(kube)[0].run()
    assert kube.annotations[sl.MIGRATING] == "16-21:0>3" and sl.LEASE not in kube.annotations
    with pytest.raises(Failure, match="--to 5 needs ordinal 4: scale it out first"):
        job(kube, "--to", "5")[0].run()
    kube = FakeKube({sl.SLOTS: "64"})
    with pytest.raises(Failure, match="--init"):
        job(kube)[0].run()
    kube = FakeKube({sl.SLOTS: "64", sl.ASSIGNMENT: "0-3:0"})
    with pytest.raises(Failure, match="invalid value '0-3:0' for annotation 'shard.io/assignment'"):
        job(kube)[0].run()
