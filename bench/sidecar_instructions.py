"""Profile: user-space instructions per proxied request, counted by callgrind.

Not a speed benchmark (bench/sidecar.py is that, with its peers): a number this
noisy machine does not move, for judging a change to the request path. Two
runs of the same build agree within about 2%, where rps moves by 30%.

The sidecar runs under ``valgrind --tool=callgrind`` with instrumentation off;
after a warm-up, wrk drives it at 50 connections for ``--duration`` seconds
with instrumentation on. Instructions counted / requests answered is printed,
with the functions of the data plane that cost the most per request.

The kernel's half of the CPU (reads and writes) is not counted.
``make bench-instructions`` runs it; the last file is kept for
``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_sidecar", REPO / "bench" / "sidecar.py")
assert _spec is not None and _spec.loader is not None
bench_sidecar = importlib.util.module_from_spec(_spec)
sys.modules["bench_sidecar"] = bench_sidecar  # its dataclasses look their module up
_spec.loader.exec_module(bench_sidecar)


def run(args: argparse.Namespace) -> int:
    bench = bench_sidecar.Bench(argparse.Namespace(pin=True, duration=args.duration))
    out = Path(args.keep)
    out.unlink(missing_ok=True)
    try:
        backend_ports = [bench_sidecar.free_port() for _ in range(3)]
        ports = dict(zip((9001, 9002, 9003), backend_ports, strict=True))
        bench.nginx("backends", "nginx-backends.conf", ports, "0")
        port = bench_sidecar.free_port()
        addresses = ",".join(f"127.0.0.1:{p}" for p in backend_ports)
        sidecar = bench.spawn(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}", sys.executable, "-m", "shardmesh", "sidecar",
             "--route", f"backend={addresses}", "--listen", f"127.0.0.1:{port}",
             "--admin", "off", "--log-level", "warning",
             *(["--slot-map", "64:0-21:0,22-42:1,43-63:2"] if args.slots else [])],
            "1", cwd=REPO)
        for p in backend_ports:
            bench_sidecar.wait_port(p)
        bench_sidecar.wait_port(port, timeout=120)  # valgrind starts Python slowly
        bench.warm(port)
        control = ["callgrind_control"]
        subprocess.run([*control, "--instr=on", str(sidecar.pid)], check=True,
                       capture_output=True)
        result = bench.wrk(port, 50)
        subprocess.run([*control, "--instr=off", str(sidecar.pid)], check=True,
                       capture_output=True)
        bench.stop(sidecar)
    finally:
        bench.close()
    deadline = time.monotonic() + 30
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    totals = re.search(r"^totals:\s+(\d+)", out.read_text(), re.M)
    if totals is None:
        sys.exit(f"bench: no totals in {out}")
    instructions = int(totals[1])
    mode = "slot mode (64 slots)" if args.slots else "default mode"
    print(f"sidecar data plane {bench_sidecar.data_plane()}, {mode}: {result.requests:,} "
          "requests at 50 connections under callgrind")
    print(f"user-space instructions per request: {instructions / result.requests:,.0f}\n")
    print(top_functions(out, result.requests, args.top))
    print(f"(callgrind_annotate --inclusive=yes {out} for the rest)")
    return 0


def top_functions(path: Path, requests: int, count: int) -> str:
    """The data plane's (compiled) functions by inclusive instructions per request."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(path)],
                          capture_output=True, text=True, check=True).stdout
    rows: dict[str, int] = {}
    for match in re.finditer(r"^\s*([\d,]+) \([\s\d.]+%\)\s+\S*?:CPyDef_(\w+?) ", text, re.M):
        name = match[2].replace("___", ".")
        rows.setdefault(name, int(match[1].replace(",", "")) // requests)
    ranked = sorted(rows.items(), key=lambda item: -item[1])[:count]
    lines = ["| function (inclusive) | instructions / request |", "|---|---:|"]
    lines += [f"| {name} | {per:,} |" for name, per in ranked]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load")
    parser.add_argument("--slots", action="store_true",
                        help="route in slot mode (--slot-map over the three backends)")
    parser.add_argument("--top", type=int, default=15, help="functions listed")
    parser.add_argument("--keep", default="/tmp/shardmesh-sidecar.callgrind",
                        help="where the callgrind file is written")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
