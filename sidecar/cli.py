"""``shardmesh sidecar``: run the routing sidecar (the ``shard-router`` container).

The command-line contract (the webhook injects exactly this; keep it stable)
==========================================================================

Kubernetes mode (what the webhook injects)::

    shardmesh sidecar --annotations-file /etc/shard/annotations
                      [--listen 127.0.0.1:15001] [--admin 0.0.0.0:15020]
                      [--kubeconfig PATH] [--drain-seconds 15] [--log-level info]

    env POD_NAME       the pod's name (downward API ``metadata.name``), for logs
    env POD_NAMESPACE  the pod's namespace (downward API ``metadata.namespace``);
                       routes without ``.namespace`` use it. Required in this mode.
    env KUBECONFIG     used when --kubeconfig is not given; with neither, the
                       in-cluster service-account config is used.

    The annotations file is the downward API volume item of
    ``metadata.annotations`` (path ``annotations`` of a volume mounted at
    ``/etc/shard``). It is re-read when the kubelet swaps it; a bad edit keeps
    the previous routes and logs why. The sidecar needs RBAC to get/list/watch
    ``statefulsets`` (apps) and ``pods`` in the backend namespaces.

Static mode (no Kubernetes)::

    shardmesh sidecar --route NAME=HOST:PORT[,HOST:PORT...] [--route ...]
                      [--strategy modulo|jump|rendezvous] [--key header:X-Shard-Key]
                      [--unavailable fail|wait:<ms>] [--timeout 30s] [--static-probe 1]
                      [--listen ...] [--admin ...]

    Address i serves ordinal i, N is the number of addresses. Every ordinal
    starts ready; a TCP connect probe every --static-probe seconds (0: off)
    marks an address that refuses connections not ready (503 shard_unavailable)
    until it accepts again. --strategy/--key/--unavailable/--timeout take the
    same values as the ``shard.io/*`` annotations and apply to every --route.

Limits (both modes): --connect-timeout, --client-idle-timeout,
--client-body-timeout, --max-connections (``shard.io/max-connections`` wins),
--buffer-budget, --max-json-body; the README's "Limits and timeouts" says what
each bounds and what the client sees.

Ports: data on --listen (default ``127.0.0.1:15001``), ``/healthz``,
``/readyz`` and ``/metrics`` on --admin (default ``0.0.0.0:15020``); ``--admin
off`` disables the admin listener. Exit codes: 0 after a clean SIGTERM/SIGINT
drain, 2 for bad arguments (the message names the flag and the value).
"""

from __future__ import annotations

import argparse
import sys

from sidecar.annotations import DEFAULT_MAX_CONNECTIONS, AnnotationError
from sidecar.settings import SettingsError, build_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardmesh sidecar",
        description="Route each request to the StatefulSet ordinal that owns its shard key.",
        epilog="Kubernetes mode needs --annotations-file and env POD_NAMESPACE; "
        "static mode needs one or more --route. See 'pydoc sidecar.cli' for the full contract.",
    )
    k8s = parser.add_argument_group("Kubernetes mode")
    k8s.add_argument("--annotations-file", metavar="PATH",
                     help="downward-API file of the pod's annotations, e.g. /etc/shard/annotations")
    k8s.add_argument("--kubeconfig", metavar="PATH",
                     help="kubeconfig (default: $KUBECONFIG, else in-cluster config)")
    static = parser.add_argument_group("static mode")
    static.add_argument("--route", action="append", default=[], metavar="NAME=ADDR0,ADDR1,...",
                        help="a route whose ordinal i is served at ADDRi (host:port); repeatable")
    static.add_argument("--strategy", default="modulo", help="modulo (default), jump or rendezvous")
    static.add_argument("--key", default="header:X-Shard-Key",
                        help="header:<Name>, query:<name>, path:<i> or json:<dotted.path>")
    static.add_argument("--unavailable", default="fail", help="fail (default) or wait:<ms>")
    static.add_argument("--timeout", default="30s", help="upstream timeout, e.g. 500ms, 30s, 2m")
    static.add_argument("--static-probe", type=float, default=1.0, metavar="S",
                        help="seconds between TCP probes that mark an address that refuses "
                        "connections not ready (default 1; 0 disables)")
    static.add_argument("--slot-map", metavar="S:ASSIGNMENT",
                        help="slot mode for every static route (SPEC §6), e.g. "
                        "64:0-21:0,22-42:1,43-63:2; address i serves pod ordinal i")
    static.add_argument("--slot-epoch", default="1", metavar="E",
                        help="the epoch of --slot-map (default 1)")
    common = parser.add_argument_group("listeners and lifecycle")
    common.add_argument("--listen", default="127.0.0.1:15001", metavar="HOST:PORT",
                        help="data listener (default 127.0.0.1:15001)")
    common.add_argument("--admin", default="0.0.0.0:15020", metavar="HOST:PORT|off",
                        help="health/metrics listener (default 0.0.0.0:15020)")
    common.add_argument("--drain-seconds", type=float, default=15.0, metavar="S",
                        help="on SIGTERM, how long in-flight requests may finish (default 15)")
    common.add_argument("--client-idle-timeout", type=float, default=60.0, metavar="S",
                        help="close a client connection that sends nothing for S seconds "
                             "between requests or inside a request head (default 60)")
    common.add_argument("--client-head-timeout", type=float, default=10.0, metavar="S",
                        help="answer 408 and close when a request head has not arrived whole "
                             "S seconds after its first byte (default 10)")
    common.add_argument("--client-body-timeout", type=float, default=60.0, metavar="S",
                        help="answer 408 (or cut the response) when a client pauses S seconds "
                             "inside a request body or stops reading its response (default 60)")
    common.add_argument("--connect-timeout", type=float, default=3.0, metavar="S",
                        help="seconds a connect to a backend may take; tried twice, then 502 "
                             "(default 3)")
    common.add_argument("--max-connections", default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                        help="client connections served at once; more get 503 "
                             f"too_many_connections (default {DEFAULT_MAX_CONNECTIONS}; the "
                             "shard.io/max-connections annotation overrides it)")
    common.add_argument("--buffer-budget", type=int, default=32 << 20, metavar="BYTES",
                        help="bytes all connections may hold in full buffers (slow readers, "
                             "slow backends, json: bodies); over it the connection that held "
                             "one longest is cut (default 32 MiB)")
    common.add_argument("--max-json-body", type=int, default=1 << 20, metavar="BYTES",
                        help="largest body read to extract a json: key (default 1 MiB; 413 beyond)")
    common.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"))
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = build_settings(args)
    except (SettingsError, AnnotationError) as err:
        print(f"shardmesh sidecar: {err}", file=sys.stderr)
        return 2
    from sidecar.app import run

    return run(settings)
