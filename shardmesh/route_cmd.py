"""``shardmesh route --count N [--strategy S] [--start S0] KEY...``: the ordinal owning each key.

The output is one tab-separated line per key, ``KEY<TAB>ORDINAL``, so it is
easy to compare with the sidecar's ``/_shard/resolve`` and to use in scripts.
``--json`` prints the same records the sidecar's resolve endpoint uses.
``--start`` is the StatefulSet's ``spec.ordinals.start``: the ordinal printed
is then the owning pod's (start + the key function's result), as the sidecar's.
"""

from __future__ import annotations

import argparse
import json
import sys

from sidecar.shardfn import STRATEGIES, pod_ordinal


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardmesh route", description=__doc__.splitlines()[0])
    parser.add_argument("--count", "-n", type=int, required=True, help="replica count N (>= 1)")
    parser.add_argument("--strategy", "-s", default="modulo", choices=STRATEGIES)
    parser.add_argument("--start", type=int, default=0,
                        help="the StatefulSet's spec.ordinals.start (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per key")
    parser.add_argument("keys", nargs="+", metavar="KEY")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.count < 1:
        print(f"shardmesh route: --count must be >= 1, got {args.count}", file=sys.stderr)
        return 2
    if args.start < 0:
        print(f"shardmesh route: --start must be >= 0, got {args.start}", file=sys.stderr)
        return 2
    for key in args.keys:
        ordinal = pod_ordinal(key, args.strategy, args.count, args.start)
        if args.json:
            record = {"key": key, "strategy": args.strategy, "count": args.count,
                      "start": args.start}
            print(json.dumps({**record, "ordinal": ordinal}))
        else:
            print(f"{key}\t{ordinal}")
    return 0
