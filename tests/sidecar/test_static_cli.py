"""The real ``shardmesh sidecar`` command in static mode, as a separate process.

Also where memory is checked: bodies of a few hundred MB stream through in both
directions and the sidecar's peak RSS must stay flat.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.shardfn import ordinal_for
from tests.cluster.processes import free_port
from tests.sidecar.backends import Backend, start_backends
from tests.sidecar.harness import get_json, request

REPO = Path(__file__).resolve().parents[2]
STREAM_BYTES = 300 * 1024 * 1024
#: Peak RSS growth allowed while STREAM_BYTES go up and down (buffers are 256 KiB).
RSS_GROWTH_LIMIT = 40 * 1024 * 1024


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def sidecar_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "shardmesh", "sidecar", *args]


@pytest.fixture(scope="module")
def cli_sidecar() -> Iterator[tuple[subprocess.Popen[str], int, int, list[Backend]]]:
    backends = start_backends(3)
    port, admin = free_port(), free_port()
    process = subprocess.Popen(
        sidecar_command("--route", "svc=" + ",".join(b.address for b in backends),
                        "--strategy", "jump", "--listen", f"127.0.0.1:{port}",
                        "--admin", f"127.0.0.1:{admin}", "--drain-seconds", "2"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 15
    while True:
        try:
            if request(admin, "GET", "/readyz")[0] == 200:
                break
        except OSError:
            pass
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "sidecar not ready within 15s"
        time.sleep(0.05)
    yield process, port, admin, backends
    if process.poll() is None:
        process.kill()
        process.communicate()
    for backend in backends:
        backend.stop()


def test_static_mode_routes_with_the_chosen_strategy(cli_sidecar) -> None:  # type: ignore[no-untyped-def]
    _, port, _, _ = cli_sidecar
    for key in ("0", "1", "17", "user-9", "18446744073709551616"):
        status, head, body = get_json(port, "/svc/x", {"X-Shard-Key": key})
        assert (status, body["ordinal"]) == (200, ordinal_for(key, "jump", 3))


def _upload(port: int, size: int) -> dict[str, object]:
    block = b"u" * (256 * 1024)

    def body() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("PUT", "/svc/upload", body=body(),
                 headers={"X-Shard-Key": "1", "Content-Length": str(size)})
    result: dict[str, object] = json.loads(conn.getresponse().read())
    conn.close()
    return result


def _download(port: int, size: int, mode: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", f"/svc/{mode}/{size}", headers={"X-Shard-Key": "2"})
    response = conn.getresponse()
    total = 0
    while data := response.read(1 << 20):
        total += len(data)
    conn.close()
    return total


def test_large_bodies_stream_without_growing_memory(cli_sidecar) -> None:  # type: ignore[no-untyped-def]
    process, port, _, _ = cli_sidecar
    _download(port, 4 << 20, "bytes")  # warm up: pools, buffers
    baseline = peak_rss(process.pid)
    uploaded = _upload(port, STREAM_BYTES)
    assert uploaded["body_bytes"] == STREAM_BYTES
    assert _download(port, STREAM_BYTES, "bytes") == STREAM_BYTES
    assert _download(port, STREAM_BYTES // 3, "chunked") == STREAM_BYTES // 3
    growth = peak_rss(process.pid) - baseline
    print(f"sidecar peak RSS {baseline >> 20} MiB -> +{growth >> 10} KiB")
    assert growth < RSS_GROWTH_LIMIT, f"peak RSS grew by {growth >> 20} MiB"


def test_sigterm_exits_cleanly(cli_sidecar) -> None:  # type: ignore[no-untyped-def]
    process, port, _, _ = cli_sidecar
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--route", "svc"], "invalid value 'svc' for --route", id="route-no-addr"),
        pytest.param(["--route", "svc=h:p"], "invalid value 'h:p' for --route", id="bad-port"),
        pytest.param(["--route", "svc=127.0.0.1:1", "--strategy", "ring"],
                     "invalid value 'ring' for annotation 'shard.io/strategy'", id="strategy"),
        pytest.param(["--route", "svc=127.0.0.1:1", "--key", "cookie:x"],
                     "unknown key source 'cookie'", id="key"),
        pytest.param([], "give --annotations-file", id="no-mode"),
    ],
)
def test_bad_arguments_exit_2_naming_the_value(args: list[str], message: str) -> None:
    result = subprocess.run(sidecar_command(*args), cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "POD_NAMESPACE": ""},
                            timeout=30)
    assert result.returncode == 2
    assert message in result.stderr


def test_unusable_kubeconfig_exits_1_with_the_reason(tmp_path: Path) -> None:
    annotations = tmp_path / "annotations"
    annotations.write_text('shard.io/backend="ledger"\n')
    result = subprocess.run(
        sidecar_command("--annotations-file", str(annotations), "--kubeconfig",
                        str(tmp_path / "missing"), "--listen", "127.0.0.1:0", "--admin", "off"),
        cwd=REPO, capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO), "POD_NAMESPACE": "shop"})
    assert result.returncode == 1
    assert f"cannot load the kubeconfig {tmp_path / 'missing'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_taken_port_exits_1_with_the_reason() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            sidecar_command("--route", "svc=127.0.0.1:1", "--listen", f"127.0.0.1:{port}",
                            "--admin", "off"),
            cwd=REPO, capture_output=True, text=True, timeout=30,
            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1
    assert "address already in use" in result.stderr.lower()
