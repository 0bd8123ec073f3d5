"""Soak: mixed traffic with faults through a static-mode sidecar, watching RSS, fds and routing.

Not a test: it runs for ``--duration`` seconds (``make soak``: 10 minutes) and
prints a table sampled over time. Everything is on 127.0.0.1:

- three backends, each a process of this script (``--backend``), answer as the
  ordinal they are started for and check ownership themselves: the key must map
  to them (``sidecar.shardfn``, modulo over 3) and ``X-Shard-Ordinal`` must be
  theirs. A request they do not own is answered 421 and counted as a misroute;
- one ``shardmesh sidecar`` process (compiled if built) routes to them;
- client threads send GETs, POST uploads, large and slow responses, each with a
  request id the backend echoes; faults are injected all along: a backend is
  killed and restarted, some requests outlast ``--timeout`` (504), and clients
  disconnect mid-request and mid-response.

Per request the client records ok (2xx from the owner, id echoed), 503/502/504,
cut (the sidecar closed a response it could not finish, as it must when a
backend dies mid-body), misrouted (answered by a non-owner: must be 0) and lost
(sent, never answered, no error: must be 0). The goal: RSS flat within 10% from
the first sample after warm-up to the end, and no misroute, no loss.

Bounded: each client loop stops at the deadline or after ``--max-requests``,
every socket has a timeout, and only loopback is targeted.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sidecar.shardfn import ordinal_for  # noqa: E402

COUNT = 3
HOST = "127.0.0.1"
#: The sidecar's upstream timeout here; /slow requests above it must come back 504.
TIMEOUT_S = 1.0
#: A client that hears nothing for this long counts the request as lost.
CLIENT_TIMEOUT_S = 15.0
OUTCOMES = ("ok", "503", "502", "504", "cut", "other", "misrouted", "lost")


# --- the backend (a process of its own, so that it can be killed) -----------------------


def serve_backend(ordinal: int, port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            remaining = length
            while remaining:
                data = self.rfile.read(min(remaining, 65536))
                if not data:
                    return
                remaining -= len(data)
            key = self.headers.get("X-Shard-Key", "")
            owner = ordinal_for(key, "modulo", COUNT) == ordinal and \
                self.headers.get("X-Shard-Ordinal") == str(ordinal) and \
                self.headers.get("X-Shard-Count") == str(COUNT)
            parts = self.path.strip("/").split("/")
            if owner and parts[0] == "slow":
                time.sleep(int(parts[1]) / 1000)
            size = int(parts[1]) if owner and parts[0] == "big" else 0
            body = json.dumps({"ordinal": ordinal, "id": self.headers.get("X-Request-Id"),
                               "body_bytes": length}).encode()
            self.send_response(200 if owner else 421)
            self.send_header("Content-Length", str(len(body) + size))
            self.end_headers()
            self.wfile.write(body)
            block = b"x" * 65536
            while size > 0:
                self.wfile.write(block[:size])
                size -= len(block)

        do_GET = do_POST = _any

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 512

        def handle_error(self, request: Any, client_address: Any) -> None:
            return  # clients that leave mid-response are part of the soak

    Server((HOST, port), Handler).serve_forever()


# --- the harness -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout}s")


@dataclass
class Counts:
    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    lock: threading.Lock = field(default_factory=threading.Lock)
    examples: list[str] = field(default_factory=list)

    def add(self, outcome: str, example: str = "") -> None:
        with self.lock:
            self.values[outcome] += 1
            if example and len(self.examples) < 10:
                self.examples.append(f"{outcome}: {example}")


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counts = Counts()
        self.stop = threading.Event()
        self.backend_ports = [free_port() for _ in range(COUNT)]
        self.backends: list[subprocess.Popen[bytes] | None] = [None] * COUNT
        self.port = free_port()
        self.sidecar: subprocess.Popen[bytes] | None = None
        self.faults: dict[str, int] = {"kills": 0, "client_aborts": 0}

    def start_backend(self, ordinal: int) -> None:
        self.backends[ordinal] = subprocess.Popen(
            [sys.executable, __file__, "--backend", str(ordinal), str(self.backend_ports[ordinal])],
            cwd=REPO)

    def start(self) -> None:
        for ordinal in range(COUNT):
            self.start_backend(ordinal)
        for port in self.backend_ports:
            wait_port(port)
        addresses = ",".join(f"{HOST}:{p}" for p in self.backend_ports)
        self.sidecar = subprocess.Popen(
            [sys.executable, "-m", "shardmesh", "sidecar", "--route", f"svc={addresses}",
             "--listen", f"{HOST}:{self.port}", "--admin", "off", "--timeout",
             f"{int(TIMEOUT_S * 1000)}ms", "--client-idle-timeout", "5",
             "--client-body-timeout", "5", "--static-probe", "0.5", "--log-level", "error"],
            cwd=REPO)
        wait_port(self.port)

    def close(self) -> None:
        self.stop.set()
        for proc in [self.sidecar, *self.backends]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
                if proc.poll() is None:
                    proc.kill()

    # --- clients --------------------------------------------------------------

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        conn: http.client.HTTPConnection | None = None
        for n in range(self.args.max_requests):
            if self.stop.is_set():
                break
            if conn is None:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=CLIENT_TIMEOUT_S)
            kind = rng.random()
            key = str(rng.randrange(1_000_000)) if rng.random() < 0.7 else f"user-{rng.random()}"
            rid = f"{seed}-{n}"
            try:
                if kind < 0.03:
                    self.abort_mid_request(key)
                    continue
                if kind < 0.06:
                    self.abort_mid_response(key)
                    continue
                if kind < 0.08:
                    path, body = f"/svc/slow/{int(TIMEOUT_S * 2000)}", None  # a 504
                elif kind < 0.12:
                    path, body = f"/svc/big/{rng.randrange(100_000, 2_000_000)}", None
                elif kind < 0.3:
                    path, body = "/svc/upload", os.urandom(rng.randrange(1, 300_000))
                else:
                    path, body = f"/svc/get/{n}", None
                conn.request("POST" if body else "GET", path, body=body,
                             headers={"X-Shard-Key": key, "X-Request-Id": rid})
                response = conn.getresponse()
                data = response.read()
                self.judge(key, rid, response.status, data)
                if response.will_close:
                    conn.close()
                    conn = None
            except TimeoutError:
                self.counts.add("lost", f"{rid} {key}")
                conn.close()
                conn = None
            except (http.client.IncompleteRead, ConnectionError, http.client.HTTPException,
                    OSError):
                # The sidecar cut a response it could not finish (a backend died
                # mid-body), or closed a connection it had to: the client knows.
                self.counts.add("cut")
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def judge(self, key: str, rid: str, status: int, data: bytes) -> None:
        if status in (502, 503, 504):
            self.counts.add(str(status))
            return
        if status == 421:
            self.counts.add("misrouted", f"{rid} key {key}: {data[:200]!r}")
            return
        if status != 200:
            self.counts.add("other", f"{rid} {status} {data[:200]!r}")
            return
        end = data.index(b"}") + 1
        answer = json.loads(data[:end])
        if answer["ordinal"] != ordinal_for(key, "modulo", COUNT) or answer["id"] != rid:
            self.counts.add("misrouted", f"{rid} key {key}: {answer}")
        else:
            self.counts.add("ok")

    def abort_mid_request(self, key: str) -> None:
        with socket.create_connection((HOST, self.port), timeout=5) as sock:
            sock.sendall(b"POST /svc/upload HTTP/1.1\r\nHost: x\r\nX-Shard-Key: %b\r\n"
                         b"Content-Length: 100000\r\n\r\n" % key.encode() + b"y" * 5000)
        self.faults["client_aborts"] += 1

    def abort_mid_response(self, key: str) -> None:
        with socket.create_connection((HOST, self.port), timeout=5) as sock:
            sock.sendall(b"GET /svc/big/5000000 HTTP/1.1\r\nHost: x\r\nX-Shard-Key: %b\r\n"
                         b"\r\n" % key.encode())
            with contextlib.suppress(OSError):
                sock.recv(10000)
        self.faults["client_aborts"] += 1

    # --- faults and sampling ---------------------------------------------------

    def killer(self) -> None:
        rng = random.Random(99)
        while not self.stop.wait(self.args.kill_every):
            ordinal = rng.randrange(COUNT)
            proc = self.backends[ordinal]
            if proc is not None:
                proc.kill()
                proc.wait()
            self.faults["kills"] += 1
            if self.stop.wait(2.0):
                break
            self.start_backend(ordinal)

    def sample(self) -> dict[str, Any]:
        assert self.sidecar is not None
        pid = self.sidecar.pid
        rss = 0.0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
        with self.counts.lock:
            counts = dict(self.counts.values)
        return {"t": 0.0, "rss": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")), **counts}

    def run(self) -> int:
        args = self.args
        self.start()
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True)
                   for i in range(args.clients)]
        threads.append(threading.Thread(target=self.killer, daemon=True))
        began = time.monotonic()
        for thread in threads:
            thread.start()
        rows: list[dict[str, Any]] = []
        interval = max(1.0, args.duration / 20)
        while (elapsed := time.monotonic() - began) < args.duration:
            time.sleep(min(interval, args.duration - elapsed))
            assert self.sidecar is not None
            if self.sidecar.poll() is not None:
                print(f"soak: the sidecar exited with {self.sidecar.returncode}")
                self.close()
                return 1
            row = self.sample()
            row["t"] = time.monotonic() - began
            rows.append(row)
            print(f"  {row['t']:6.0f}s rss {row['rss']:.1f} MiB fds {row['fds']} "
                  f"ok {row['ok']}", flush=True)
        self.stop.set()
        for thread in threads:
            thread.join(CLIENT_TIMEOUT_S + 5)
        final = self.sample()
        final["t"] = time.monotonic() - began
        rows.append(final)
        self.close()
        return self.report(rows)

    def report(self, rows: list[dict[str, Any]]) -> int:
        print()
        print("| t (s) | RSS (MiB) | fds | ok | 503 | 502 | 504 | cut | other | misrouted | lost |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print(f"| {row['t']:.0f} | {row['rss']:.1f} | {row['fds']} | {row['ok']} | "
                  f"{row['503']} | {row['502']} | {row['504']} | {row['cut']} | {row['other']} | "
                  f"{row['misrouted']} | {row['lost']} |")
        warm = rows[min(len(rows) - 1, max(1, len(rows) // 10))]
        growth = (rows[-1]["rss"] - warm["rss"]) / warm["rss"]
        last = rows[-1]
        print(f"\nfaults: {self.faults['kills']} backend kills, {self.faults['client_aborts']} "
              f"client disconnects mid-request/response; slow requests past the timeout: "
              f"{last['504']} answered 504")
        print(f"RSS {warm['rss']:.1f} MiB after warm-up (t={warm['t']:.0f}s) -> "
              f"{last['rss']:.1f} MiB at the end ({growth:+.1%}; goal within 10%); "
              f"peak {max(r['rss'] for r in rows):.1f} MiB")
        for example in self.counts.examples:
            print("  " + example)
        ok = abs(growth) <= 0.10 and last["misrouted"] == 0 and last["lost"] == 0
        print("soak: " + ("PASS" if ok else "FAIL") + f" (misrouted {last['misrouted']}, "
              f"lost {last['lost']})")
        return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds (default 600)")
    parser.add_argument("--clients", type=int, default=12, help="client threads (default 12)")
    parser.add_argument("--max-requests", type=int, default=2_000_000,
                        help="per client thread, a bound on top of the duration")
    parser.add_argument("--kill-every", type=float, default=15.0,
                        help="seconds between backend kills (each restarts 2 s later)")
    parser.add_argument("--backend", nargs=2, type=int, metavar=("ORDINAL", "PORT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        serve_backend(*args.backend)
        return 0
    soak = Soak(args)
    try:
        return soak.run()
    finally:
        soak.close()


if __name__ == "__main__":
    sys.exit(main())
