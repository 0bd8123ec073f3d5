"""``shardmesh route`` prints what the running sidecar's ``/_shard/resolve`` says."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardmesh.route_cmd import main as route_main
from tests.cluster.processes import free_port

REPO = Path(__file__).resolve().parents[2]
KEYS = ["0", "7", "42", "-7", "007", "123456789012345678901234567890", "account-7",
        "user@example.com", "日本", "a b", *[f"acct-{n}" for n in range(20)]]
COUNT = 5


@pytest.fixture(params=["modulo", "jump", "rendezvous"])
def sidecar_port(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    strategy: str = request.param
    port = free_port()
    # The addresses need not answer: resolve reports ownership whether or not it is ready.
    addresses = ",".join(f"127.0.0.1:{free_port()}" for _ in range(COUNT))
    process = subprocess.Popen(
        [sys.executable, "-m", "shardmesh", "sidecar", "--route", f"svc={addresses}",
         "--strategy", strategy, "--listen", f"127.0.0.1:{port}", "--admin", "off"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_shard/routes", timeout=1)
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                time.sleep(0.1)
        yield strategy, port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_route_command_equals_sidecar_resolve(
        sidecar_port: tuple[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    strategy, port = sidecar_port
    assert route_main(["--count", str(COUNT), "--strategy", strategy, "--json", *KEYS]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["key"] for p in printed] == KEYS
    for record in printed:
        query = urllib.parse.urlencode({"route": "svc", "key": record["key"]})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_shard/resolve?{query}") as resp:
            resolved = json.load(resp)
        assert (resolved["ordinal"], resolved["count"], resolved["strategy"]) == \
            (record["ordinal"], COUNT, strategy), record


def test_route_command_plain_output_and_bad_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert route_main(["--count", "3", "7", "account-7"]) == 0
    assert capsys.readouterr().out == "7\t1\naccount-7\t2\n"
    assert route_main(["--count", "0", "7"]) == 2
    assert "--count must be >= 1, got 0" in capsys.readouterr().err


def test_route_slot_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert route_main(["--slots", "64", "7", "account-7"]) == 0
    from sidecar.shardfn import ordinal_for

    slot = ordinal_for("account-7", "modulo", 64)
    assert capsys.readouterr().out == f"7\t7\naccount-7\t{slot}\n"
    assert route_main(["--slots", "64", "--assignment", "0-21:0,22-42:1,43-63:2",
                       "7", "30", "63"]) == 0
    assert capsys.readouterr().out == "7\t7\t0\n30\t30\t1\n63\t63\t2\n"
    assert route_main(["--slots", "64", "--assignment", "0-21:0,22-42:1,43-63:2", "--epoch",
                       "4", "--json", "--strategy", "jump", "42"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record == {"key": "42", "strategy": "jump", "slot": ordinal_for("42", "jump", 64),
                      "slots": 64, "epoch": 4, "ordinal": record["ordinal"]}
    assert record["ordinal"] in (0, 1, 2)
    assert route_main(["--slots", "64", "--assignment", "0-21:0", "7"]) == 2
    err = capsys.readouterr().err
    assert "invalid value '0-21:0' for annotation 'shard.io/assignment'" in err
    assert "42 of 64 slots have no owner" in err
    assert route_main(["--slots", "0", "7"]) == 2
    assert route_main(["--slots", "8", "--count", "3", "7"]) == 2
    assert route_main(["7"]) == 2
