"""``shardmesh demo``: the whole routing story on this machine, with no cluster.

1. Shows what the webhook would add to ``examples/client-deployment.yaml``.
2. Starts three stateful replicas (``sharded-svc-0..2``) and the real sidecar
   in static mode on ``localhost:15001``.
3. Sends deposits for a few hundred accounts through the sidecar and prints
   account -> ordinal -> replica that answered -> its counter.
4. Proves from the replicas' own state that each account lives on one replica,
   the one the documented function names, and that no replica saw a 409.
5. Stops one replica: its accounts get 503 with Retry-After, the rest go on.
6. Slot mode (SPEC §6, shardmesh/demo_slots.py): scaling to 4 moves nothing; a
   reshard hands slots off batch by batch, and every deposit is still there.

It exits 0 only if every claim held, and it leaves nothing running.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardmesh.accounts_backend import AccountsBackend
from sidecar.shardfn import STRATEGIES, Strategy, ordinal_for

REPLICAS = 3
ROUTE = "bank"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "client-deployment.yaml"


class DemoFailure(Exception):
    """A claim of the demo did not hold; the message says which."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say()
    say(f"== {text}")


# --- step 1: offline injection ----------------------------------------------


def show_injection() -> None:
    heading(f"What the webhook adds to {EXAMPLE.name} (shardmesh inject -f ...)")
    done = subprocess.run(
        [sys.executable, "-m", "shardmesh", "inject", "-f", str(EXAMPLE)],
        capture_output=True, text=True, timeout=60,
    )
    if done.returncode != 0:
        raise DemoFailure(f"offline injection failed: {done.stderr.strip()}")
    import yaml

    injected = yaml.safe_load(done.stdout)
    spec = injected["spec"]["template"]["spec"]
    meta = injected["spec"]["template"]["metadata"]
    sidecars = [c for c in spec.get("initContainers", []) + spec["containers"]
                if c["name"] == "shard-router"]
    if len(sidecars) != 1:
        raise DemoFailure(f"expected one shard-router container, found {len(sidecars)}")
    router = sidecars[0]
    where = "initContainers (native sidecar)" if router in spec.get("initContainers", []) \
        else "containers"
    say(f"  + container shard-router in {where}")
    say(f"      command: {' '.join(router.get('command', []) + router.get('args', []))}")
    probes = [router[p]["httpGet"] for p in ("readinessProbe", "livenessProbe") if p in router]
    described = [f"{g['path']} on :{g['port']}" for g in probes]
    say(f"      probes:  {', '.join(described)}")
    security = router.get("securityContext", {})
    flags = [f"{k}={v}" for k, v in security.items() if not isinstance(v, dict)]
    say(f"      securityContext: {', '.join(flags)}")
    say(f"  + volumes:   {', '.join(v['name'] for v in spec.get('volumes', []))}")
    say(f"  + annotation shard.io/status: {meta['annotations'].get('shard.io/status')}")


# --- steps 2-5: the routing story -------------------------------------------


@contextlib.contextmanager
def replicas(strategy: Strategy) -> Iterator[list[AccountsBackend]]:
    started = [AccountsBackend("127.0.0.1", 0, i, strategy).start() for i in range(REPLICAS)]
    try:
        yield started
    finally:
        for backend in started:
            with contextlib.suppress(Exception):
                backend.stop()


@dataclass(frozen=True)
class Running:
    """A started sidecar: its data and admin ports."""

    port: int
    admin_port: int


@contextlib.contextmanager
def sidecar(addresses: list[str], strategy: Strategy, listen_port: int,
            extra: Sequence[str] = (), why: str = "") -> Iterator[Running]:
    admin_port = free_port()
    command = [
        sys.executable, "-m", "shardmesh", "sidecar",
        "--route", f"{ROUTE}={','.join(addresses)}",
        "--strategy", strategy, "--key", "path:1",
        "--listen", f"127.0.0.1:{listen_port}", "--admin", f"127.0.0.1:{admin_port}", *extra,
    ]
    say(f"  $ shardmesh sidecar --route {ROUTE}={','.join(addresses)} "
        f"--strategy {strategy} --key path:1 --listen 127.0.0.1:{listen_port}"
        + "".join(f" {a}" for a in extra) + (f"   ({why})" if why else ""))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_ready(admin_port, process)
        yield Running(listen_port, admin_port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _forget(listen_port)


def _forget(port: int) -> None:
    """Drop the kept-alive connection to a sidecar that is gone."""
    conn = _connections.pop(port, None)
    if conn is not None:
        conn.close()


def wait_ready(admin_port: int, process: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read() if process.stderr else ""
            raise DemoFailure(f"the sidecar exited with {process.returncode}: {err.strip()}")
        with contextlib.suppress(OSError):
            status, _, _ = request(admin_port, "GET", "/readyz")
            if status == 200:
                return
        time.sleep(0.1)
    raise DemoFailure(f"the sidecar was not ready on :{admin_port} within {timeout:.0f}s")


_connections: dict[int, http.client.HTTPConnection] = {}


def request(port: int, method: str, path: str) -> tuple[int, dict[str, str], Any]:
    """One request over a kept-alive connection (the way an app would talk to the sidecar)."""
    for attempt in range(2):
        conn = _connections.get(port) or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        _connections[port] = conn
        try:
            conn.request(method, path, body=b"" if method == "POST" else None)
            response = conn.getresponse()
            raw = response.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            _connections.pop(port, None)
            if attempt:
                raise
            continue
        headers = {k.lower(): v for k, v in response.getheaders()}
        body = json.loads(raw) if headers.get("content-type", "").startswith("application/json") \
            else raw.decode(errors="replace")
        return response.status, headers, body
    raise AssertionError("unreachable")


def drive(port: int, accounts: list[str]) -> dict[str, dict[str, Any]]:
    """Deposit into every account (1 to 4 times each); return the last answer per account."""
    answers: dict[str, dict[str, Any]] = {}
    for n, account in enumerate(accounts):
        for _ in range(1 + (n // 3) % 4):
            status, headers, body = request(port, "POST", f"/{ROUTE}/accounts/{account}/deposit")
            if status != 200:
                raise DemoFailure(f"deposit for account {account} answered {status}: {body}")
            answers[account] = {**body, "sidecar_ordinal": headers.get("x-shard-ordinal")}
    return answers


def print_table(answers: dict[str, dict[str, Any]], strategy: Strategy, shown: int) -> None:
    heading(f"Account -> ordinal -> replica that answered -> counter ({strategy}, N={REPLICAS})")
    say(f"  {'account':<12} {'ordinal':>7}  {'replica':<15} {'counter':>7}")
    for account in list(answers)[:shown]:
        a = answers[account]
        say(f"  {account:<12} {ordinal_for(account, strategy, REPLICAS):>7}  "
            f"{a['replica']:<15} {a['count']:>7}")
    if len(answers) > shown:
        say(f"  ... and {len(answers) - shown} more accounts")


def prove_single_home(backends: list[AccountsBackend], answers: dict[str, dict[str, Any]],
                      strategy: Strategy) -> None:
    heading("Proof, from each replica's own state")
    homes: dict[str, list[str]] = {}
    for backend in backends:
        with backend.ledger.lock:
            held, misrouted = dict(backend.ledger.counters), backend.ledger.misrouted
        say(f"  {backend.ledger.name}: {len(held):>4} accounts, {sum(held.values()):>4} deposits, "
            f"{misrouted} misrouted (409)")
        if misrouted:
            raise DemoFailure(f"{backend.ledger.name} got {misrouted} requests it does not own")
        for account in held:
            homes.setdefault(account, []).append(backend.ledger.name)
    for account in answers:
        ordinal = ordinal_for(account, strategy, REPLICAS)
        owner = f"sharded-svc-{ordinal}"
        if homes.get(account) != [owner]:
            raise DemoFailure(f"account {account} lives on {homes.get(account)}, not [{owner}]")
        answer = answers[account]
        if answer["replica"] != owner or answer["sidecar_ordinal"] != str(ordinal):
            raise DemoFailure(f"account {account} was answered by {answer['replica']}")
    spread = Counter(h[0] for h in homes.values())
    say(f"  every one of {len(answers)} accounts lives on exactly one replica, its owner "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(spread.items()))})")


def show_outage(port: int, backends: list[AccountsBackend], accounts: list[str],
                strategy: Strategy) -> None:
    victim = backends[1]
    heading(f"Stopping {victim.ledger.name}: its accounts fail clearly, the others go on")
    victim.stop()
    mine = next(a for a in accounts if ordinal_for(a, strategy, REPLICAS) == 1)
    other = next(a for a in accounts if ordinal_for(a, strategy, REPLICAS) != 1)
    deadline = time.monotonic() + 10
    while True:
        status, headers, body = request(port, "POST", f"/{ROUTE}/accounts/{mine}/deposit")
        if status == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    say(f"  account {mine} (ordinal 1): HTTP {status}, Retry-After: {headers.get('retry-after')}, "
        f"{json.dumps(body)}")
    if status != 503 or "retry-after" not in headers or body.get("error") != "shard_unavailable":
        raise DemoFailure(f"expected 503 shard_unavailable with Retry-After, got {status} {body}")
    status, _, body = request(port, "POST", f"/{ROUTE}/accounts/{other}/deposit")
    say(f"  account {other} (ordinal {ordinal_for(other, strategy, REPLICAS)}): HTTP {status}, "
        f"answered by {body.get('replica') if isinstance(body, dict) else body}")
    if status != 200:
        raise DemoFailure(f"account {other} should be unaffected, got {status} {body}")


def run(accounts_count: int, strategy: Strategy, shown: int, skip_inject: bool) -> None:
    if not skip_inject:
        show_injection()
    listen_port = 15001 if port_is_free(15001) else free_port()
    heading(f"Starting {REPLICAS} stateful replicas and the sidecar on localhost:{listen_port}")
    accounts = [str(n) for n in range(1, accounts_count + 1)]
    with replicas(strategy) as backends:
        for b in backends:
            say(f"  {b.ledger.name} serving on {b.address}")
        with sidecar([b.address for b in backends], strategy, listen_port) as running:
            port = running.port
            answers = drive(port, accounts)
            print_table(answers, strategy, shown)
            prove_single_home(backends, answers, strategy)
            show_outage(port, backends, accounts, strategy)
    demo_slots.run(accounts, strategy, listen_port, shown)
    for conn in _connections.values():
        conn.close()
    heading("Done: every request reached its owner; nothing is left running.")


from shardmesh import demo_slots  # noqa: E402  (it imports this module's helpers)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shardmesh demo", description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=300, help="how many accounts to drive")
    parser.add_argument("--strategy", choices=STRATEGIES, default="modulo")
    parser.add_argument("--show", type=int, default=15, help="rows of the table to print")
    parser.add_argument("--skip-inject", action="store_true", help="skip the injection preview")
    args = parser.parse_args(argv)
    if args.accounts < REPLICAS:
        parser.error(f"--accounts must be at least {REPLICAS}, got {args.accounts}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        run(args.accounts, args.strategy, args.show, args.skip_inject)
    except DemoFailure as failure:
        print(f"\nshardmesh demo FAILED: {failure}", file=sys.stderr)
        return 1
    return 0
