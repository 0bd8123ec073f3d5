"""``shardmesh route --count N [--strategy S] [--start S0] KEY...``: the ordinal owning each key.

The output is one tab-separated line per key, ``KEY<TAB>ORDINAL``, so it is
easy to compare with the sidecar's ``/_shard/resolve`` and to use in scripts.
``--json`` prints the same records the sidecar's resolve endpoint uses.
``--start`` is the StatefulSet's ``spec.ordinals.start``: the ordinal printed
is then the owning pod's (start + the key function's result), as the sidecar's.

Slot mode (SPEC §6): ``--slots S`` prints ``KEY<TAB>SLOT``, the key function
over S; with ``--assignment`` (the ``shard.io/assignment`` text) it adds the
owning pod ordinal, ``KEY<TAB>SLOT<TAB>ORDINAL``.
"""

from __future__ import annotations

import argparse
import json
import sys

from sidecar import slots as sl
from sidecar.shardfn import STRATEGIES, pod_ordinal


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardmesh route", description=__doc__.splitlines()[0])
    parser.add_argument("--count", "-n", type=int, help="replica count N (>= 1)")
    parser.add_argument("--strategy", "-s", default="modulo", choices=STRATEGIES)
    parser.add_argument("--start", type=int, default=0,
                        help="the StatefulSet's spec.ordinals.start (default 0)")
    parser.add_argument("--slots", type=int, help="slot mode: S (shard.io/slots), instead of "
                        "--count")
    parser.add_argument("--assignment", help="slot mode: the shard.io/assignment text, to "
                        "print each slot's pod ordinal")
    parser.add_argument("--epoch", type=int, help="slot mode: shard.io/epoch, for --json")
    parser.add_argument("--json", action="store_true", help="print one JSON object per key")
    parser.add_argument("keys", nargs="+", metavar="KEY")
    return parser


def fail(message: str) -> int:
    print(f"shardmesh route: {message}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.start < 0:
        return fail(f"--start must be >= 0, got {args.start}")
    if args.slots is not None or args.assignment is not None:
        return slot_mode(args)
    if args.count is None:
        return fail("give --count N (or --slots S in slot mode)")
    if args.count < 1:
        return fail(f"--count must be >= 1, got {args.count}")
    for key in args.keys:
        ordinal = pod_ordinal(key, args.strategy, args.count, args.start)
        if args.json:
            record = {"key": key, "strategy": args.strategy, "count": args.count,
                      "start": args.start}
            print(json.dumps({**record, "ordinal": ordinal}))
        else:
            print(f"{key}\t{ordinal}")
    return 0


def slot_mode(args: argparse.Namespace) -> int:
    if args.count is not None:
        return fail("--count and --slots exclude each other: in slot mode S replaces N")
    if args.slots is None:
        return fail("--assignment needs --slots S")
    try:
        slots = sl.parse_slots(str(args.slots))
        assignment = None if args.assignment is None else \
            sl.parse_assignment(args.assignment, slots, args.start)
    except sl.SlotError as err:
        return fail(str(err))
    for key in args.keys:
        slot = sl.slot_for(key, args.strategy, slots)
        ordinal = None if assignment is None else assignment.owner(slot)
        if args.json:
            print(json.dumps({"key": key, "strategy": args.strategy, "slot": slot,
                              "slots": slots, "epoch": args.epoch, "ordinal": ordinal}))
        elif ordinal is None:
            print(f"{key}\t{slot}")
        else:
            print(f"{key}\t{slot}\t{ordinal}")
    return 0
