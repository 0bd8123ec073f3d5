"""A fleet of ``bench/discovery_fleets.py`` in a process of its own, driven over a pipe.

Two thousand watch threads share one GIL: in the bench's own process they
would slow the bench's polling of the API server, and so every duration it
times. Here the fleet runs in a child; the parent sends one command per line
on its stdin (``began``, ``synced``, ``expect N``, ``arrivals``, ``last``,
``restarts``, ``stop``)
and reads one JSON answer per line. Arrival times are ``time.monotonic()``,
one clock for every process on Linux, so the parent compares them with its own.

As a script: ``fleet_process.py SPEC.json`` (see ``FleetProcess.__init__``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.discovery_fleets import DirectFleet, DirectoryFleet, Tally  # noqa: E402
from bench.procstat import proc_cpu_s  # noqa: E402
from tests.cluster.processes import tail  # noqa: E402


class FleetProcess(Tally):
    """``spec``: ``mode`` "direct" with ``kubeconfigs``, or "directory" with ``url``,
    ``ca`` (PEM) and ``tokens``; and ``namespace`` and ``statefulset``."""

    def __init__(self, spec: dict[str, Any], workdir: Path) -> None:
        n = len(spec["kubeconfigs"] if spec["mode"] == "direct" else spec["tokens"])
        super().__init__(n)
        name = f"fleet-{spec['mode']}-{spec.get('part', 0)}"
        path = workdir / f"{name}.json"
        path.write_text(json.dumps(spec))
        self.log = workdir / f"{name}.log"
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen([sys.executable, __file__, str(path)], cwd=REPO,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True)

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:
            line = ""
        if not line:
            raise RuntimeError(f"the {command!r} of a client fleet found it gone; "
                               f"{self.log}:\n{tail(self.log)}")
        return json.loads(line)

    def synced(self) -> int:
        return int(self.ask("synced"))

    def start_time(self) -> float | None:
        began = self.ask("began")
        return None if began is None else float(began)

    def expect(self, replicas: int) -> None:
        self.ask(f"expect {replicas}")

    def arrivals(self) -> list[float]:
        return [float(t) for t in self.ask("arrivals")]

    def restarts(self) -> dict[str, int]:
        return dict(self.ask("restarts"))

    def last_news(self) -> float:
        return float(self.ask("last"))

    def cpu_s(self) -> float | None:
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.ask("stop")
            self.proc.wait(30)


class Fleets(Tally):
    """Several FleetProcesses as one (a thousand direct watchers split over a few
    processes, as they are split over pods in a cluster: fewer threads per GIL)."""

    def __init__(self, fleets: list[FleetProcess]) -> None:
        super().__init__(sum(f.n for f in fleets))
        self.fleets = fleets

    def synced(self) -> int:
        return sum(f.synced() for f in self.fleets)

    def start_time(self) -> float | None:
        times = [t for f in self.fleets if (t := f.start_time()) is not None]
        return min(times, default=None)

    def expect(self, replicas: int) -> None:
        for f in self.fleets:
            f.expect(replicas)

    def arrivals(self) -> list[float]:
        return [t for f in self.fleets for t in f.arrivals()]

    def last_news(self) -> float:
        return max(f.last_news() for f in self.fleets)

    def restarts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for f in self.fleets:
            for reason, count in f.restarts().items():
                total[reason] = total.get(reason, 0) + count
        return total

    def cpu_s(self) -> float | None:
        return sum(f.cpu_s() or 0.0 for f in self.fleets)

    def stop(self) -> None:
        for f in self.fleets:
            f.stop()


def serve(fleet: DirectFleet | DirectoryFleet, commands: IO[str], answers: IO[str]) -> None:
    for line in commands:
        command, _, arg = line.strip().partition(" ")
        answer: Any = "ok"
        if command == "synced":
            answer = fleet.synced()
        elif command == "began":
            answer = fleet.start_time()
        elif command == "expect":
            fleet.expect(int(arg))
        elif command == "arrivals":
            answer = fleet.arrivals()
        elif command == "restarts":
            answer = fleet.restarts()
        elif command == "last":
            answer = fleet.last_news()
        elif command == "stop":
            fleet.stop()
        else:
            answer = f"unknown command {command!r}"
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
        if command == "stop":
            return


def main(spec_path: str) -> None:
    from directory.client import Endpoint, client_context

    # A thousand watches each log their broken connection: counted instead (restarts).
    logging.getLogger("shardmesh.sidecar.discovery").setLevel(logging.CRITICAL)
    spec = json.loads(Path(spec_path).read_text())
    fleet: DirectFleet | DirectoryFleet
    if spec["mode"] == "direct":
        fleet = DirectFleet([Path(p) for p in spec["kubeconfigs"]], spec["namespace"],
                            spec["statefulset"])
    else:
        context = client_context(spec["ca"])
        fleet = DirectoryFleet([Endpoint(spec["url"], t, context) for t in spec["tokens"]],
                               spec["namespace"], spec["statefulset"])
    threading.Thread(target=fleet.start, daemon=True).start()  # paced: answer meanwhile
    serve(fleet, sys.stdin, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
