"""``shardmesh demo`` (what ``make demo`` runs) tells the whole story and cleans up."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_proves_single_home_and_503_then_leaves_nothing_running() -> None:
    done = subprocess.run([sys.executable, "-m", "shardmesh", "demo", "--accounts", "90"],
                          cwd=REPO, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "+ container shard-router" in out
    assert "every one of 90 accounts lives on exactly one replica" in out
    assert re.search(r"HTTP 503, Retry-After: \d+", out), out
    assert "0 misrouted" in out and "misrouted (409)" in out
    slots = out[out.index("== Slot mode"):]
    assert "90 of 90 accounts answered by the same replica as before; sharded-svc-3 holds 0" \
        in slots
    moved = int(re.search(r"Which accounts moved \((\d+) of 90\)", slots)[1])  # type: ignore[index]
    assert moved > 0
    assert re.search(rf"sharded-svc-3: +{moved} accounts", slots), slots
    # the fence: a deposit by the old map was refused by the old owner, answered 503
    assert re.search(r"sharded-svc-0 refused it \(421, it is at epoch 3\).*HTTP 503 "
                     r"shard_unavailable", slots)
    assert "1 refused (421)" in slots and "0 misrouted (409)" in slots
    assert "every one of 90 accounts lives on exactly one replica, its slot's owner at " \
           "epoch 7, with all 270 acknowledged deposits" in slots
    assert "/_shard/resolve for account" in slots and "epoch 7, ordinal 3" in slots
    port = int(re.search(r"the sidecar on localhost:(\d+)", out)[1])  # type: ignore[index]
    with socket.socket() as probe:  # the sidecar is gone: nothing listens on its port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT
        probe.bind(("127.0.0.1", port))


def test_demo_rejects_too_few_accounts() -> None:
    done = subprocess.run([sys.executable, "-m", "shardmesh", "demo", "--accounts", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--accounts must be at least 3, got 1" in done.stderr
