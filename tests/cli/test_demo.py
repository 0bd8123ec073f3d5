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
    port = int(re.search(r"the sidecar on localhost:(\d+)", out)[1])  # type: ignore[index]
    with socket.socket() as probe:  # the sidecar is gone: nothing listens on its port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT
        probe.bind(("127.0.0.1", port))


def test_demo_rejects_too_few_accounts() -> None:
    done = subprocess.run([sys.executable, "-m", "shardmesh", "demo", "--accounts", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--accounts must be at least 3, got 1" in done.stderr
