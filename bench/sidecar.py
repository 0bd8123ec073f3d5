"""Benchmark: the sidecar vs nginx and HAProxy doing the same hash routing, plus a direct call.

Not a test: it prints a table (rps, p50, p99 at 1 and 50 connections, ratios
vs nginx) and the sidecar's RSS under load. ``make bench-sidecar`` runs it after
``bench/ensure-peers.sh`` installed wrk, nginx and haproxy.

Everything runs on 127.0.0.1 with configs written to a temp dir from the
anchors in bench/anchors (copied from the shared anchors),
ports adapted. Fairness: with ``--pin`` (the default on machines with 2+
CPUs) the proxy under test gets CPU 1 to itself, and wrk plus the nginx
backends share CPU 0, the same for every contender. Noise: the targets are
measured in interleaved rounds, and each ratio is the median over the rounds
of that round's ratio (both sides measured moments apart); every round's
ratio is printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ratio_table import Ratios, print_ratio_table  # noqa: E402

ANCHOR_DIRS = (REPO / "bench" / "anchors", REPO.parent / "shared" / "anchors")
GOALS = {"rps50": 0.75, "p50_1": 1.5, "rss_mb": 60}


def anchors() -> Path:
    for folder in ANCHOR_DIRS:
        if (folder / "nginx-backends.conf").exists():
            return folder
    sys.exit(f"bench: no anchor configs in {', '.join(map(str, ANCHOR_DIRS))}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def adapt(text: str, tmp: Path, ports: dict[int, int]) -> str:
    """Point the anchor config at our ports and temp dir."""
    text = text.replace("/tmp/bench", str(tmp))
    for old, new in ports.items():
        text = re.sub(rf"(?<=:){old}\b", str(new), text)
    return text


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int = 0
    #: CPU time the proxy spent per request (the sidecar only; 0 when not measured).
    cpu_us: float = 0.0


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> Result:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    requests = int(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]

    def percentile(p: str) -> float:
        match = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if match is None:
            raise RuntimeError(f"no {p}% latency in wrk output:\n{output}")
        return float(match[1]) * _UNITS[match[2]]

    return Result(rps, percentile("50"), percentile("99"), requests)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="shardmesh-bench-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.anchors = anchors()
        self.pin = args.pin and (os.cpu_count() or 1) >= 2

    def taskset(self, cpu: str) -> list[str]:
        return ["taskset", "-c", cpu] if self.pin and shutil.which("taskset") else []

    def spawn(self, argv: list[str], cpu: str, **kwargs: object) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(self.taskset(cpu) + argv, stdout=subprocess.DEVNULL,
                                   stderr=open(self.tmp / "stderr.log", "ab"),  # noqa: SIM115
                                   **kwargs)  # type: ignore[call-overload]
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        for process in self.processes:
            self.stop(process)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def nginx(self, name: str, template: str, ports: dict[int, int], cpu: str
              ) -> subprocess.Popen[bytes]:
        conf = self.tmp / f"{name}.conf"
        conf.write_text(adapt((self.anchors / template).read_text(), self.tmp, ports))
        return self.spawn(["nginx", "-p", str(self.tmp), "-e", str(self.tmp / f"{name}.err"),
                           "-c", str(conf), "-g", "daemon off;"], cpu)

    def wrk(self, port: int, connections: int) -> Result:
        script = self.anchors / "wrk-shard-keys.lua"
        argv = self.taskset("0") + [
            "wrk", "-t1", f"-c{connections}", f"-d{self.args.duration}s", "--latency",
            "-s", str(script), f"http://127.0.0.1:{port}/backend/"]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        if "Non-2xx" in out or "Socket errors" in out:
            print(f"  warning: wrk saw errors on :{port}:\n{out}", file=sys.stderr)
        return parse_wrk(out)

    def warm(self, port: int) -> None:
        argv = self.taskset("0") + ["wrk", "-t1", "-c10", "-d1s", "-s",
                                    str(self.anchors / "wrk-shard-keys.lua"),
                                    f"http://127.0.0.1:{port}/backend/"]
        subprocess.run(argv, capture_output=True, check=True)

    def measure(self, port: int, pid: int | None = None) -> dict[int, Result]:
        self.warm(port)
        results = {}
        for connections in (1, 50):
            before = cpu_seconds(pid) if pid else 0.0
            result = self.wrk(port, connections)
            if pid:
                result.cpu_us = (cpu_seconds(pid) - before) * 1e6 / max(result.requests, 1)
            results[connections] = result
        return results


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def rss_sampler(pid: int) -> Iterator[list[int]]:
    """Samples the process's RSS (KiB) every 50 ms while the block runs."""
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, StopIteration):
                status = Path(f"/proc/{pid}/status").read_text()
                samples.append(int(next(line for line in status.splitlines()
                                        if line.startswith("VmRSS:")).split()[1]))
            stop.wait(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def run(args: argparse.Namespace) -> int:
    for tool in ("wrk", "nginx", "haproxy"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"bench: {tool} is missing: run bench/ensure-peers.sh")
    os.environ["PATH"] += ":/usr/sbin"
    bench = Bench(args)
    runs: dict[str, dict[int, list[Result]]] = {}
    rss_samples: list[int] = []
    try:
        backend_ports = [free_port() for _ in range(3)]
        ports = dict(zip((9001, 9002, 9003), backend_ports, strict=True))
        bench.nginx("backends", "nginx-backends.conf", ports, "0")
        addresses = ",".join(f"127.0.0.1:{p}" for p in backend_ports)
        targets = {name: free_port() for name in ("sidecar", "nginx", "haproxy")}
        targets["direct"] = backend_ports[0]

        sidecar = bench.spawn([sys.executable, "-m", "shardmesh", "sidecar", "--route",
                               f"backend={addresses}", "--listen",
                               f"127.0.0.1:{targets['sidecar']}", "--admin", "off",
                               "--log-level", "warning"], "1", cwd=REPO)
        bench.nginx("proxy", "nginx-hash-proxy.conf", {**ports, 15101: targets["nginx"]}, "1")
        cfg = bench.tmp / "haproxy.cfg"
        cfg.write_text(adapt((bench.anchors / "haproxy-hash.cfg").read_text(), bench.tmp,
                             {**ports, 15102: targets["haproxy"]}))
        bench.spawn(["haproxy", "-db", "-f", str(cfg)], "1")
        for port in [*backend_ports, *targets.values()]:
            wait_port(port)
        # Interleaved rounds, median reported: this machine's speed drifts between runs.
        for _ in range(args.rounds):
            for name, port in targets.items():
                if name == "sidecar":
                    with rss_sampler(sidecar.pid) as samples:
                        result = bench.measure(port, sidecar.pid)
                    rss_samples += samples
                else:
                    result = bench.measure(port)
                for connections, r in result.items():
                    runs.setdefault(name, {}).setdefault(connections, []).append(r)
    finally:
        bench.close()
    results = {name: {c: median(rs) for c, rs in by_conn.items()} for name, by_conn in runs.items()}
    report(results, max(rss_samples, default=0), bench.pin, args, round_ratios(runs))
    return 0



def round_ratios(runs: dict[str, dict[int, list[Result]]]) -> Ratios:
    """Per target and round, against nginx measured moments apart: (rps@50, p50@1).
    A burst of noise from the neighbours then spoils one round's ratio, not the
    median over all rounds."""
    nginx = runs["nginx"]
    return {
        name: ([t.rps / n.rps for t, n in zip(by_conn[50], nginx[50], strict=True)],
               [t.p50_ms / n.p50_ms for t, n in zip(by_conn[1], nginx[1], strict=True)])
        for name, by_conn in runs.items()
    }


def median(results: list[Result]) -> Result:
    def mid(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    return Result(mid([r.rps for r in results]), mid([r.p50_ms for r in results]),
                  mid([r.p99_ms for r in results]), 0, mid([r.cpu_us for r in results]))


def data_plane() -> str:
    """What the measured sidecar ran: the mypyc build (make compile) or plain Python."""
    probe = subprocess.run([sys.executable, "-c", "import sidecar; print(sidecar.compiled())"],
                           cwd=REPO, capture_output=True, text=True, check=True)
    return "compiled (mypyc)" if probe.stdout.strip() == "True" else "plain Python"


def report(results: dict[str, dict[int, Result]], rss_kib: int, pinned: bool,
           args: argparse.Namespace, ratios: Ratios) -> None:
    where = "pinned: proxy on CPU 1, wrk+backends on CPU 0" if pinned else "not pinned"
    print(f"\nshardmesh sidecar benchmark: wrk -t1, {args.duration}s per run, median of "
          f"{args.rounds} interleaved rounds (ratios: the median of each round's ratio), "
          f"GET with X-Shard-Key over 100k keys, 3 nginx backends; {where}; "
          f"sidecar data plane {data_plane()}\n")
    print_ratio_table(results, ratios, rss_kib, GOALS, cpu_note=" (load-independent)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin processes to CPUs with taskset")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
