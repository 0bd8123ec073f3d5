"""Not a benchmark of the peers: the sidecar's CPU per unary gRPC call, for A/B of a change.

The machine's noise moves RPC/s; the CPU time the sidecar process spends per
call moves far less. This starts the Go backends (bench/grpcbackend) and one
sidecar, sends ``--calls`` unary calls with h2load at 1 and 50 streams on one
connection (the bench/grpc.py request), and prints CPU µs per call from
/proc. ``--profile FILE`` runs the sidecar under cProfile (slower) and
writes its stats to FILE for ``python -m pstats``.

    .venv/bin/python bench/grpc_cpu.py [--calls 20000] [--profile /tmp/h2.prof]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_grpc", REPO / "bench" / "grpc.py")
assert _spec is not None and _spec.loader is not None
bench_grpc = importlib.util.module_from_spec(_spec)
sys.modules["bench_grpc"] = bench_grpc
_spec.loader.exec_module(bench_grpc)
bench_sidecar = bench_grpc.bench_sidecar


def h2load(port: int, streams: int, calls: int, tmp: Path) -> tuple[float, str]:
    """RPC/s and h2load's mean time per request."""
    argv = ["h2load", "-c1", "-t1", f"-m{streams}", f"-n{calls}", "-d", str(tmp / "request.bin"),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-H", "x-shard-key: 1", f"http://127.0.0.1:{port}{bench_grpc.METHOD}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    requests = next(line for line in out.splitlines() if line.startswith("requests:"))
    if f"{calls} succeeded" not in requests:
        raise RuntimeError(f"h2load: not every call succeeded:\n{out}")
    mean = next(line for line in out.splitlines() if line.startswith("time for request:"))
    return (float(next(line for line in out.splitlines()
                       if line.startswith("finished in")).split(",")[1].split()[0]),
            mean.split()[5])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per stream count (min CPU)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--profile", help="run the sidecar under cProfile, stats to this file")
    args = parser.parse_args()
    bench = bench_sidecar.Bench(argparse.Namespace(pin=False, duration=1))
    try:
        (bench.tmp / "request.bin").write_bytes(bench_grpc.REQUEST)
        ports = [bench_sidecar.free_port() for _ in range(3)]
        bench.spawn([str(bench_grpc.build_backend(bench.tmp)), "-ports",
                     ",".join(map(str, ports))], "0", env={**os.environ, "GOMAXPROCS": "1"})
        listen = bench_sidecar.free_port()
        python = [sys.executable] + (["-m", "cProfile", "-o", args.profile] if args.profile
                                     else [])
        sidecar = bench.spawn(python + ["-m", "shardmesh", "sidecar", "--route",
                              "backend=" + ",".join(f"127.0.0.1:{p}" for p in ports),
                              "--listen", f"127.0.0.1:{listen}", "--admin", "off",
                              "--log-level", "warning"], "1", cwd=REPO)
        for port in [*ports, listen]:
            bench_sidecar.wait_port(port)
        h2load(listen, 50, 2000, bench.tmp)  # warm up
        for streams in args.streams:
            cpus, means = [], []
            for _ in range(args.repeat):
                before = bench_sidecar.cpu_seconds(sidecar.pid)
                rps, mean = h2load(listen, streams, args.calls, bench.tmp)
                cpus.append((bench_sidecar.cpu_seconds(sidecar.pid) - before) * 1e6 / args.calls)
                means.append(mean)
            print(f"streams {streams}: CPU per call {min(cpus):.1f} us (runs: "
                  + " ".join(f"{c:.1f}" for c in cpus) + f"), last run {rps:,.0f} RPC/s, "
                  "mean time per call " + " ".join(means))
        status = Path(f"/proc/{sidecar.pid}/status").read_text()
        print("sidecar RSS: " + ", ".join(line.replace("\t", " ").replace("  ", "")
                                          for line in status.splitlines()
                                          if line.startswith(("VmHWM", "VmRSS"))))
        if args.profile:
            sidecar.send_signal(signal.SIGINT)
            sidecar.wait(10)
            time.sleep(0.1)
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
