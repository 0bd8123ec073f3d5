"""``shardmesh accounts-backend``: one replica of the demo's stateful backend, in the foreground.

What the tests run in a pod's network namespace, and what an image can run as
the reference slot-mode backend (shardmesh/accounts_backend.py).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading

from shardmesh.accounts_backend import AccountsBackend
from sidecar import slots as slotmap
from sidecar.shardfn import STRATEGIES


def main(argv: list[str]) -> int:
    """``shardmesh accounts-backend``: one replica in the foreground, until SIGTERM."""
    p = argparse.ArgumentParser(prog="shardmesh accounts-backend",
                                description="the demo's stateful backend (one replica)")
    p.add_argument("--listen", default="0.0.0.0:8080", help="HOST:PORT (0.0.0.0:8080)")
    p.add_argument("--ordinal", type=int, required=True, help="this pod's ordinal (pod-index)")
    p.add_argument("--start", type=int, default=0, help="the StatefulSet's spec.ordinals.start")
    p.add_argument("--strategy", choices=STRATEGIES, default="modulo")
    p.add_argument("--name", help="replica name (default sharded-svc-<ordinal>)")
    p.add_argument("--slots", type=int, help="slot mode: S, with --assignment")
    p.add_argument("--assignment", help="slot mode: the shard.io/assignment this replica "
                   "starts from (then it refuses slots it never owned)")
    p.add_argument("--peer-template", default="",
                   help="how to reach ordinal {ordinal}, e.g. "
                        "sharded-svc-{ordinal}.sharded-svc:8080 (default: the address "
                        "shardmesh reshard puts in the handoff)")
    p.add_argument("--state-file", default="",
                   help="keep the accounts and the slot table in this file, written before "
                        "each answer, read back at start (then --assignment is not used)")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    backend = AccountsBackend(host or "0.0.0.0", int(port), args.ordinal, args.strategy,
                              args.name, args.start, args.peer_template, args.state_file)
    if (args.slots is None) != (args.assignment is None):
        p.error("--slots and --assignment go together")
    if args.state_file and backend.ledger.load():
        print(f"{backend.ledger.name}: state read from {args.state_file}", flush=True)
    elif args.slots is not None:
        try:
            backend.ledger.seed(args.slots, args.assignment)
        except slotmap.SlotError as err:
            p.error(str(err))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    backend.start()
    print(f"{backend.ledger.name} serving on {backend.address}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
