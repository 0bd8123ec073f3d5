"""Benchmark: unary gRPC through the sidecar vs nginx and HAProxy routing the same way, and direct.

Not a test: it prints a table (RPCs/s, p50, p99 at 1 and 50 concurrent streams
over ONE client connection, ratios vs nginx) and the sidecar's RSS under load.
``make bench-grpc`` runs it after ``bench/ensure-peers.sh`` installed h2load
(nghttp2-client), nginx and haproxy; the backends need Go (1.24 or later).

Same method as bench/sidecar.py: configs from the anchors with ports adapted,
127.0.0.1 only, the proxy under test pinned alone on CPU 1 and the load
generator plus backends on CPU 0, interleaved rounds, each ratio the median of
the rounds' ratios.

- Load: h2load, one connection (``-c1``), ``-m1`` or ``-m50`` streams, a fixed
  gRPC request (the 5-byte message prefix and 5 bytes) with ``content-type:
  application/grpc``, ``te: trailers`` and ``x-shard-key``. h2load sends the
  same headers on every request, so each round uses one key (round r: key r,
  owned by ordinal r mod 3) and the rounds rotate over the ordinals; ``direct``
  goes to that key's owner. Percentiles come from h2load's per-request log.
- Backends: bench/grpcbackend (Go's standard HTTP/2 server speaking the gRPC
  wire format), three ordinals in one process; it answers HTTP 421 to a call
  the sidecar sent to the wrong ordinal, so a misroute shows as a failure.
- Peers: nginx ``grpc_pass`` with ``hash $http_x_shard_key consistent``, HAProxy
  h2 on both sides with ``balance hdr(x-shard-key)`` (anchors/nginx-grpc-proxy.conf,
  anchors/haproxy-grpc.cfg), the sidecar in static mode with one route.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ratio_table import Ratios, print_ratio_table  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_sidecar", REPO / "bench" / "sidecar.py")
assert _spec is not None and _spec.loader is not None
bench_sidecar = importlib.util.module_from_spec(_spec)
sys.modules["bench_sidecar"] = bench_sidecar  # its dataclasses look their module up
_spec.loader.exec_module(bench_sidecar)

Result = bench_sidecar.Result
GOALS = {"rps50": 0.5, "p50_1": 2.0, "rss_mb": 60}
STREAMS = (1, 50)
#: The gRPC message: flag 0 (uncompressed), length 5, then 5 bytes.
REQUEST = b"\x00\x00\x00\x00\x05hello"
METHOD = "/shard.Echo/Unary"


def anchors() -> Path:
    for folder in bench_sidecar.ANCHOR_DIRS:
        if (folder / "nginx-grpc-proxy.conf").exists():
            return folder
    sys.exit("bench: no gRPC anchor configs (nginx-grpc-proxy.conf) in "
             + ", ".join(map(str, bench_sidecar.ANCHOR_DIRS)))


def parse_h2load(output: str, log: Path, streams: int) -> Result:
    """RPCs/s from h2load's summary; p50 and p99 from its per-request log
    (start µs, HTTP status, duration µs). Any status but 200 fails the run,
    except status 0 on at most ``streams`` calls: those the end of the run cut off."""
    summary = next((line for line in output.splitlines() if line.startswith("finished in")), "")
    requests = next((line for line in output.splitlines() if line.startswith("requests:")), "")
    if not summary or " 0 errored" not in requests:
        raise RuntimeError(f"h2load failed or saw errors:\n{output}")
    rps = float(summary.split(",")[1].split()[0])
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.count("\t") == 2]
    durations = sorted(int(row[2]) for row in rows if row[1] == "200")
    others = [row[1] for row in rows if row[1] != "200"]
    if not durations or set(others) - {"0"} or len(others) > streams:
        raise RuntimeError(f"h2load: {len(durations)} calls answered 200, others {others[:10]} "
                           "(a 421 is a misroute)")
    p50, p99 = durations[len(durations) // 2], durations[int(len(durations) * 0.99)]
    return Result(rps, p50 / 1000, p99 / 1000, len(durations))


@dataclass
class Target:
    name: str
    port: int
    pid: int | None = None


class GrpcBench(bench_sidecar.Bench):  # type: ignore[misc,name-defined]
    def h2load(self, port: int, streams: int, key: int, seconds: float) -> Result:
        log = self.tmp / "h2load.log"
        log.unlink(missing_ok=True)
        argv = self.taskset("0") + [
            "h2load", "-c1", "-t1", f"-m{streams}", f"-D{seconds:g}", "--warm-up-time=1",
            "-d", str(self.tmp / "request.bin"), "-H", "content-type: application/grpc",
            "-H", "te: trailers", "-H", f"x-shard-key: {key}", f"--log-file={log}",
            f"http://127.0.0.1:{port}{METHOD}"]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        return parse_h2load(out, log, streams)

    def measure_grpc(self, target: Target, key: int) -> dict[int, Result]:
        results = {}
        for streams in STREAMS:
            before = bench_sidecar.cpu_seconds(target.pid) if target.pid else 0.0
            result = self.h2load(target.port, streams, key, self.args.duration)
            if target.pid:
                result.cpu_us = ((bench_sidecar.cpu_seconds(target.pid) - before) * 1e6
                                 / max(result.requests, 1))
            results[streams] = result
        return results


def build_backend(tmp: Path) -> Path:
    binary = tmp / "grpcbackend"
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=REPO / "bench" / "grpcbackend",
                   check=True, env={**os.environ, "GOFLAGS": "-mod=mod", "GOPROXY": "off"})
    return binary


def run(args: argparse.Namespace) -> int:
    for tool in ("h2load", "nginx", "haproxy", "go"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"bench: {tool} is missing: run bench/ensure-peers.sh h2load nginx haproxy"
                     " (and install Go for the backends)")
    os.environ["PATH"] += ":/usr/sbin"
    bench = GrpcBench(args)
    bench.anchors = anchors()
    runs: dict[str, dict[int, list[Result]]] = {}
    rss_samples: list[int] = []
    try:
        (bench.tmp / "request.bin").write_bytes(REQUEST)
        backend_ports = [bench_sidecar.free_port() for _ in range(3)]
        ports = dict(zip((9101, 9102, 9103), backend_ports, strict=True))
        # GOMAXPROCS=1: the backends get CPU 0 only (with h2load), the same for every peer.
        bench.spawn([str(build_backend(bench.tmp)), "-ports", ",".join(map(str, backend_ports))],
                    "0", env={**os.environ, "GOMAXPROCS": "1"})
        addresses = ",".join(f"127.0.0.1:{p}" for p in backend_ports)
        proxies = {name: bench_sidecar.free_port() for name in ("sidecar", "nginx", "haproxy")}
        sidecar = bench.spawn([sys.executable, "-m", "shardmesh", "sidecar", "--route",
                               f"backend={addresses}", "--listen",
                               f"127.0.0.1:{proxies['sidecar']}", "--admin", "off",
                               "--log-level", "warning"], "1", cwd=REPO)
        bench.nginx("grpc-proxy", "nginx-grpc-proxy.conf", {**ports, 15111: proxies["nginx"]}, "1")
        cfg = bench.tmp / "haproxy.cfg"
        cfg.write_text(bench_sidecar.adapt((bench.anchors / "haproxy-grpc.cfg").read_text(),
                                           bench.tmp, {**ports, 15112: proxies["haproxy"]}))
        bench.spawn(["haproxy", "-db", "-f", str(cfg)], "1")
        for port in [*backend_ports, *proxies.values()]:
            bench_sidecar.wait_port(port)
        for round_ in range(args.rounds):
            key = round_  # modulo: owned by ordinal round_ % 3; direct goes there
            targets = [Target("sidecar", proxies["sidecar"], sidecar.pid),
                       Target("nginx", proxies["nginx"]), Target("haproxy", proxies["haproxy"]),
                       Target("direct", backend_ports[key % 3])]
            for target in targets:
                if target.pid:
                    with bench_sidecar.rss_sampler(target.pid) as samples:
                        result = bench.measure_grpc(target, key)
                    rss_samples += samples
                else:
                    result = bench.measure_grpc(target, key)
                for streams, r in result.items():
                    runs.setdefault(target.name, {}).setdefault(streams, []).append(r)
        if misrouted := [line for line in (bench.tmp / "stderr.log").read_text().splitlines()
                         if "MISROUTED" in line]:
            sys.exit("bench: misrouted calls:\n" + "\n".join(misrouted[:10]))
    finally:
        bench.close()
    results = {name: {s: bench_sidecar.median(rs) for s, rs in by_streams.items()}
               for name, by_streams in runs.items()}
    report(results, max(rss_samples, default=0), bench.pin, args,
           bench_sidecar.round_ratios(runs))
    return 0


def report(results: dict[str, dict[int, Result]], rss_kib: int, pinned: bool,
           args: argparse.Namespace, ratios: Ratios) -> None:
    where = "pinned: proxy on CPU 1, h2load+backends on CPU 0" if pinned else "not pinned"
    print(f"\nshardmesh gRPC benchmark: h2load, one connection, {args.duration}s per run, median "
          f"of {args.rounds} interleaved rounds (ratios: the median of each round's ratio), "
          f"unary calls with x-shard-key, 3 Go h2c gRPC backends; {where}; "
          f"sidecar data plane {bench_sidecar.data_plane()} "
          "(HTTP/2: the h2 library, plain Python)\n")
    print_ratio_table(results, ratios, rss_kib, GOALS, rate="RPC/s", cpu_per="RPC")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4, help="seconds per h2load run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin processes to CPUs with taskset")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
