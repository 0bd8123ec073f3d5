"""``shardmesh <command>``: a thin dispatcher; each command lives in its own module.

Commands import lazily so that ``shardmesh route`` does not pay for Flask or
the Kubernetes client.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "webhook": ("webhook.cli", "run the mutating admission webhook under gunicorn"),
    "sidecar": ("sidecar.cli", "run the routing sidecar"),
    "directory": ("directory.app", "serve shard maps to sidecars (one watcher for the cluster)"),
    "inject": ("shardmesh.inject_cmd", "apply the webhook's mutation offline to YAML"),
    "route": ("shardmesh.route_cmd", "print the ordinal that owns each key"),
    "reshard": ("shardmesh.reshard_cmd", "move slots between a StatefulSet's pods (slot mode)"),
    "check": ("shardmesh.check", "check a cluster's shardmesh installation"),
    "accounts-backend": ("shardmesh.accounts_cmd",
                         "run one replica of the demo's stateful backend"),
    "demo": ("shardmesh.demo", "run the whole routing story locally, with no cluster"),
}


def usage() -> str:
    lines = ["usage: shardmesh <command> [options]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'shardmesh <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        from sidecar import __version__, compiled

        plane = "compiled" if compiled() else "plain"
        print(f"shardmesh {__version__} (sidecar data plane: {plane})")
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"shardmesh: unknown command '{args[0]}'\n\n{usage()}", file=sys.stderr)
        return 2
    if args[0] == "webhook":
        import os

        from webhook.early import patch_for_gevent

        patch_for_gevent(args[1:], os.environ)
    module = importlib.import_module(entry[0])
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
