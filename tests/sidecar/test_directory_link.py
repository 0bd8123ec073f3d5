"""The pure decisions of a route's directory stream (sidecar.directory_link)."""

from __future__ import annotations

from typing import Any

import pytest

from directory.maps import DirMap, MapKey, to_wire
from sidecar import directory_link as dl
from sidecar.annotations import (
    DISCOVERY,
    AnnotationError,
    discovery_for,
    parse_routes,
)
from sidecar.discovery import PodInfo, StatefulSetInfo, snapshot
from sidecar.pod_checks import validate_pod
from sidecar.settings import SettingsError
from sidecar.shardmap import ShardMap
from tests.sidecar.harness import settings_from_args
from tests.webhook.test_directory_injection import real_ca

SPEC = parse_routes({"shard.io/backend": "ledger"}, "shop")[0]


def wire(namespace: str = "shop", statefulset: str = "ledger", replicas: int = 3) -> dict[str, Any]:
    pods = tuple(PodInfo(ordinal=i, ready=i != 1, ip=f"10.0.0.{i}", name=f"{statefulset}-{i}")
                 for i in range(replicas))
    return to_wire(DirMap(MapKey(namespace, statefulset), True,
                          StatefulSetInfo(replicas, 8080), pods, None))


def snap(source: str, generation: int) -> dict[str, Any]:
    return {"type": "snapshot", "source": source, "generation": generation, "map": wire()}


def beat(source: str, generation: int, synced: bool = True) -> dict[str, Any]:
    return {"type": "heartbeat", "source": source, "generation": generation, "synced": synced}


def test_resume_parameters_are_those_of_the_last_applied_snapshot() -> None:
    link = dl.Link()
    assert dl.resume(link) == (None, None)
    link = dl.confirmed(link, ("a1", 41), now=100.0)
    assert dl.resume(link) == ("a1", 41)
    assert dl.resume(dl.lost(link, "gone")) == ("a1", 41)  # a loss keeps what to resume from


def test_a_heartbeat_confirms_only_the_generation_we_hold_of_a_synced_directory() -> None:
    link = dl.confirmed(dl.Link(), ("a1", 41), now=100.0)
    assert dl.confirms(link, beat("a1", 41))
    assert not dl.confirms(link, beat("a1", 42))  # a change we have not seen
    assert not dl.confirms(link, beat("b2", 41))  # another replica's numbering
    assert not dl.confirms(link, beat("a1", 41, synced=False))  # restarted without a map
    assert not dl.confirms(dl.Link(), beat("a1", 41))  # we hold nothing
    assert not dl.confirms(link, snap("a1", 41))


def test_staleness_starts_at_the_last_confirmation_and_ends_with_the_next() -> None:
    never = dl.lost(dl.Link(), "refused")
    assert not dl.stale(never) and never.failures == 1  # no map: nothing to be stale

    link = dl.confirmed(dl.Link(), ("a1", 41), now=100.0)
    assert not dl.stale(link) and link.connected
    link = dl.lost(link, "timeout")
    assert dl.stale(link) and link.stale_since == 100.0 and not link.connected
    link = dl.lost(link, "refused again")  # a second loss keeps the first "since"
    assert link.stale_since == 100.0 and link.failures == 2 and link.error == "refused again"
    link = dl.confirmed(link, ("b2", 7), now=130.0)
    assert not dl.stale(link) and link.failures == 0 and link.error == ""
    assert link.applied == ("b2", 7)


def test_silence_of_three_heartbeats_is_a_loss() -> None:
    assert dl.idle_timeout(10.0) == 30.0
    assert dl.idle_timeout(1.0) == 3.0


def test_backoff_doubles_jittered_up_to_the_cap() -> None:
    ceilings = [dl.backoff_delay(n, 5.0, lambda low, high: high) for n in range(1, 10)]
    assert ceilings == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0]
    floors = [dl.backoff_delay(n, 5.0, lambda low, high: low) for n in range(1, 10)]
    assert floors == [c / 2 for c in ceilings]  # jitter: anywhere in [d/2, d]
    assert dl.backoff_delay(10_000, dl.REFUSED_CAP, lambda low, high: high) == dl.REFUSED_CAP


def test_each_failure_moves_to_the_next_replica() -> None:
    urls = ("https://a", "https://b")
    assert [dl.pick_url(urls, n) for n in range(4)] == [*urls, *urls]
    assert dl.pick_url(("https://svc",), 7) == "https://svc"


def test_a_map_is_taken_only_for_the_routes_own_statefulset() -> None:
    inputs = dl.accept(SPEC, wire())
    assert not isinstance(inputs, str)
    shot = snapshot(SPEC, inputs.sts, inputs.pods)
    assert [(s.ordinal, s.ready, s.address) for s in shot.shards] == [
        (0, True, ("10.0.0.0", 8080)), (1, False, ("10.0.0.1", 8080)),
        (2, True, ("10.0.0.2", 8080))]
    other_ns = dl.accept(SPEC, wire(namespace="bank"))
    assert isinstance(other_ns, str) and "bank/ledger" in other_ns and "refused" in other_ns
    assert isinstance(dl.accept(SPEC, wire(statefulset="audit")), str)
    broken = dict(wire(), replicas="three")
    assert "invalid directory map shop/ledger" in str(dl.accept(SPEC, broken))
    assert isinstance(dl.accept(SPEC, ["not", "a", "map"]), str)


def slot_wire(epoch: int, slots: int = 16, problem: str | None = None) -> dict[str, Any]:
    half = slots // 2
    doc = wire(replicas=2)
    doc["slots"] = {"shard.io/slots": str(slots), "shard.io/epoch": str(epoch),
                    "shard.io/assignment": f"0-{half - 1}:0,{half}-{slots - 1}:1"}
    doc["slot_problem"] = problem
    return doc


def apply(shard_map: ShardMap, doc: dict[str, Any]) -> None:
    """What DirectoryStream does with an accepted snapshot."""
    inputs = dl.accept(SPEC, doc)
    assert not isinstance(inputs, str), inputs
    shot = snapshot(SPEC, dl.with_slots(inputs, str(doc.get("slot_problem") or "")),
                    inputs.pods)
    shard_map.update(SPEC.name, count=shot.count, start=shot.start, shards=shot.shards,
                     problem=shot.problem, slots=shot.slots, slot_error=shot.slot_error,
                     keep_slots=shot.keep_slots)


def test_slot_maps_from_the_directory_only_move_forward() -> None:
    shard_map = ShardMap()
    shard_map.set_specs([SPEC])
    state = lambda: shard_map.get(SPEC.name)  # noqa: E731
    apply(shard_map, slot_wire(2))
    assert state().slotmap is not None and state().slotmap.epoch == 2  # type: ignore[union-attr]
    apply(shard_map, slot_wire(1))  # e.g. another replica, behind
    assert state().slotmap.epoch == 2  # type: ignore[union-attr]
    assert "went back from 2 to 1" in state().slot_problem  # type: ignore[union-attr]
    apply(shard_map, slot_wire(3))
    assert state().slotmap.epoch == 3 and not state().slot_problem  # type: ignore[union-attr]
    # A replica that never had a good map sends none, and says why: ours stays.
    none = dict(slot_wire(3), slots=None, slot_problem="invalid value 'x' for assignment")
    apply(shard_map, none)
    assert state().slotmap.epoch == 3  # type: ignore[union-attr]
    assert "invalid value 'x'" in state().slot_problem  # type: ignore[union-attr]
    # The StatefulSet left slot mode (no slots, no problem): default mode again.
    apply(shard_map, wire(replicas=2))
    assert state().slotmap is None and not state().slotted  # type: ignore[union-attr]


def test_discovery_mode_annotation_and_default() -> None:
    assert dl.mode_for(None, has_directory=True) == "directory"
    assert dl.mode_for(None, has_directory=False) == "direct"
    assert dl.mode_for("direct", has_directory=True) == "direct"
    assert dl.mode_for("directory", has_directory=False) == "directory"
    annotations = {"shard.io/backend": "a,b", DISCOVERY: "direct",
                   f"{DISCOVERY}.b": "directory"}
    assert discovery_for(annotations, "a") == "direct"
    assert discovery_for(annotations, "b") == "directory"
    assert discovery_for({"shard.io/backend": "a"}, "a") is None
    validate_pod(annotations, "shop")
    with pytest.raises(AnnotationError, match="invalid value 'API' for annotation "
                       "'shard.io/discovery.b': expected one of directory, direct"):
        validate_pod({**annotations, f"{DISCOVERY}.b": "API"}, "shop")
    with pytest.raises(AnnotationError, match="no route 'c'"):
        validate_pod({**annotations, f"{DISCOVERY}.c": "direct"}, "shop")


def test_settings_need_a_ca_for_an_https_directory(tmp_path: Any) -> None:
    base = ["--annotations-file", "/dev/null"]
    env = {"POD_NAMESPACE": "shop"}
    assert not settings_from_args(base, env).directory
    with pytest.raises(SettingsError, match="needs its CA"):
        settings_from_args(base, {**env, "SHARDMESH_DIRECTORY_URL": "https://d.svc:443"})
    with pytest.raises(SettingsError, match="invalid value 'd.svc' for --directory-url"):
        settings_from_args([*base, "--directory-url", "d.svc"], env)
    with pytest.raises(SettingsError, match="SHARDMESH_DIRECTORY_CA holds no usable CA"):
        settings_from_args(base, {**env, "SHARDMESH_DIRECTORY_URL": "https://a",
                                  "SHARDMESH_DIRECTORY_CA": "-----BEGIN CERTIFICATE-----\nx"})
    ca = real_ca()
    settings = settings_from_args(base, {**env, "SHARDMESH_DIRECTORY_URL": "https://a,https://b",
                                         "SHARDMESH_DIRECTORY_CA": ca})
    assert settings.directory_urls == ("https://a", "https://b") and settings.directory_ca == ca
    with pytest.raises(SettingsError, match="cannot read --directory-ca-file /nonexistent"):
        settings_from_args([*base, "--directory-url", "https://a", "--directory-ca-file",
                            "/nonexistent"], env)
