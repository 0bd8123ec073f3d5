"""Which decisions become Events, and where they point."""

from __future__ import annotations

from typing import Any

import pytest

from tests.webhook.golden import review
from webhook.events import build
from webhook.policy import Decision

OWNER = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "client-7d9f8",
         "uid": "0f5a9b3e-1111-4222-8333-444455556666", "controller": True}
INJECTED = Decision("injected", "injected", "the shard-router sidecar was injected")
REJECTED = Decision("rejected", "invalid_annotation",
                    "invalid value 'x' for annotation 'shard.io/timeout': expected a duration")
SKIPPED = Decision("skipped", "injection_not_enabled", "nobody opted in")


def pod(owners: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"generateName": "client-7d9f8-", "ownerReferences": owners},
            "spec": {"containers": [{"name": "app"}]}}


@pytest.mark.parametrize(
    ("decision", "owners", "dry_run", "reason"),
    [
        pytest.param(INJECTED, [OWNER], False, "ShardRouterInjected", id="injected"),
        pytest.param(REJECTED, [OWNER], False, "ShardRouterRejected", id="rejected"),
        pytest.param(SKIPPED, [OWNER], False, None, id="skipped-is-quiet"),
        pytest.param(INJECTED, [OWNER], True, None, id="dry-run-has-no-side-effects"),
        pytest.param(INJECTED, [], False, None, id="bare-pod-has-no-controller"),
        pytest.param(INJECTED, [{**OWNER, "controller": False}], False, None,
                     id="non-controller-owner"),
    ],
)
def test_event_for_decision(decision: Decision, owners: list[dict[str, Any]], dry_run: bool,
                            reason: str | None) -> None:
    request = review(pod(owners), "shop", dry_run)["request"]
    body = build(request, decision, "shardmesh-webhook")
    if reason is None:
        assert body is None
        return
    assert body is not None
    assert body["reason"] == reason
    assert body["involvedObject"]["kind"] == "ReplicaSet"
    assert body["involvedObject"]["uid"] == OWNER["uid"]
    assert body["metadata"]["namespace"] == "shop"
    assert "client-7d9f8-*" in body["message"] and decision.message in body["message"]
    assert body["type"] == ("Warning" if decision.result == "rejected" else "Normal")


def test_echoed_values_are_clipped() -> None:
    long_pod = pod([OWNER])
    long_pod["metadata"]["generateName"] = "g" * 100_000
    body = build(review(long_pod, "shop", False)["request"],
                 Decision("rejected", "invalid_annotation", "m" * 10_000), "shardmesh-webhook")
    assert body is not None
    assert len(body["message"].encode()) <= 1024 and "more bytes]" in body["message"]
