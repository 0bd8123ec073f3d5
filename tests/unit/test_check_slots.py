"""``shardmesh check``'s slot-map verdicts (pure)."""

from __future__ import annotations

from typing import Any

from shardmesh.check_slots import slot_findings


def sts(annotations: dict[str, str], replicas: int = 3, start: int = 0) -> dict[str, Any]:
    return {"metadata": {"name": "ledger", "annotations": annotations},
            "spec": {"replicas": replicas, "ordinals": {"start": start}}}


def verdict(annotations: dict[str, str], **spec: int) -> tuple[str, str, tuple[str, ...]]:
    [finding] = slot_findings("shop", "ledger", sts(annotations, **spec))
    return finding.status, finding.message, finding.hints


def test_default_mode_and_absent_statefulsets_say_nothing() -> None:
    assert slot_findings("shop", "ledger", sts({})) == []
    assert slot_findings("shop", "ledger", None) == []


def test_each_slot_map_verdict() -> None:
    status, message, _ = verdict({"shard.io/slots": "64", "shard.io/assignment": "0-10:0"})
    assert status == "FAIL" and message.startswith("statefulset shop/ledger: invalid value")
    assert "53 of 64 slots have no owner" in message
    status, message, hints = verdict({"shard.io/slots": "64"})
    assert status == "WARN" and "503 shard_map_not_ready" in message
    assert hints == ("shardmesh reshard ledger -n shop --init",)
    scaled_in = {"shard.io/slots": "8", "shard.io/assignment": "0-3:0,4-5:1,6-7:2",
                 "shard.io/epoch": "4"}
    status, message, hints = verdict(scaled_in, replicas=2)
    assert status == "WARN" and "ordinal 2: 2 slots" in message and "outside 0..1" in message
    assert hints == ("shardmesh reshard ledger -n shop --to 2",)
    status, message, _ = verdict({**scaled_in, "shard.io/migrating": "0-1:0>2"})
    assert (status, message) == ("OK", "statefulset shop/ledger: 8 slots at epoch 4, "
                                 "2 slots in flight")
    status, message, _ = verdict({**scaled_in}, start=1)  # ordinal 0 is below the start
    assert status == "FAIL" and "below spec.ordinals.start 1" in message
