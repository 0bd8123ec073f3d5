"""The sidecar's settings: one dataclass, built from CLI arguments and the environment here only."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.annotations import (
    DEFAULT_MAX_CONNECTIONS,
    KEY,
    MAX_CONNECTIONS,
    STRATEGY,
    TIMEOUT,
    UNAVAILABLE,
    AnnotationError,
    Backend,
    RouteSpec,
    parse_duration,
    parse_key_source,
    parse_max_connections,
    parse_strategy,
    parse_unavailable,
)
from sidecar.slots import ASSIGNMENT, EPOCH, SLOTS, SlotError, SlotMap
from sidecar.slots import parse as parse_slot_annotations


class SettingsError(ValueError):
    """A bad flag or environment value; the message names it and its value."""


@dataclass(frozen=True)
class StaticRoute:
    """A ``--route NAME=ADDR0,ADDR1`` entry: address i serves ordinal i."""

    spec: RouteSpec
    addresses: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Settings:
    #: Data listener (127.0.0.1:15001 in a pod).
    listen: tuple[str, int] = ("127.0.0.1", 15001)
    #: Health/metrics listener; None disables it.
    admin: tuple[str, int] | None = ("0.0.0.0", 15020)
    #: Static mode: the routes from --route. Empty means Kubernetes mode.
    static_routes: tuple[StaticRoute, ...] = ()
    #: Static mode: ``--slot-map``, the slot map of every static route (None: default mode).
    static_slots: SlotMap | None = None
    #: Kubernetes mode: the downward-API annotations file.
    annotations_file: str | None = None
    #: Kubernetes mode: kubeconfig path, or None for in-cluster config.
    kubeconfig: str | None = None
    pod_name: str = ""
    pod_namespace: str = ""
    #: How long in-flight requests may finish after SIGTERM.
    drain_seconds: float = 15.0
    #: The largest request body read to extract a ``json:`` key (413 beyond).
    max_json_body: int = 1 << 20
    #: Longest request line / all headers of one request, in bytes (431/400 beyond).
    max_request_line: int = 8192
    max_header_bytes: int = 64 * 1024
    #: Idle upstream connections kept per ordinal.
    pool_size: int = 64
    #: Seconds a connect may take before the attempt counts as failed (then retried once).
    connect_timeout: float = 3.0
    #: The longest a client may pause inside a request body, or leave its response
    #: unread (408 before the response began, else the connection is cut).
    client_body_seconds: float = 60.0
    #: Client connections served at once; more get 503 too_many_connections. The
    #: default keeps the sidecar well under the 128Mi the webhook gives it (README).
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: Bytes all connections together may hold in full buffers (a client that does
    #: not read, a backend that does not read, a body held for a connection or a
    #: json: key); over it, the connection that held one longest is cut. With the
    #: default cap, RSS stays under the injected 128Mi (README, Limits).
    buffer_budget: int = 32 << 20
    log_level: str = "info"
    #: Static mode: seconds between TCP probes of each address (0: never; all stay ready).
    static_probe_seconds: float = 1.0
    #: Annotations file poll interval (the kubelet swaps a symlink; inotify misses that).
    poll_seconds: float = 1.0
    #: A client connection that sends nothing for this long while no request of
    #: its is in progress (idle keep-alive, or a request head that stalls) is closed.
    client_idle_seconds: float = 60.0
    #: A request head must arrive whole within this long of its first byte (408 beyond),
    #: however steadily it trickles in.
    client_head_seconds: float = 10.0

    @property
    def static(self) -> bool:
        return bool(self.static_routes)


def parse_hostport(flag: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or len(port) > 5 \
            or not 0 <= int(port) <= 65535:
        raise SettingsError(f"invalid value '{value}' for {flag}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def parse_static_route(value: str, key: str, strategy: str, unavailable: str,
                       timeout: str) -> StaticRoute:
    name, sep, addrs = value.partition("=")
    if not sep or not name or not addrs:
        raise SettingsError(f"invalid value '{value}' for --route: expected NAME=HOST:PORT[,...]")
    addresses = tuple(parse_hostport("--route", a.strip()) for a in addrs.split(","))
    spec = RouteSpec(
        backend=Backend(route=name, statefulset=name, namespace="", port=None),
        key=parse_key_source(KEY, key),
        strategy=parse_strategy(STRATEGY, strategy),
        wait_ms=parse_unavailable(UNAVAILABLE, unavailable),
        timeout_s=parse_duration(TIMEOUT, timeout),
    )
    return StaticRoute(spec=spec, addresses=addresses)


def build_settings(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """The one place that reads flags and environment variables."""
    env = os.environ if env is None else env
    routes = tuple(
        parse_static_route(r, args.key, args.strategy, args.unavailable, args.timeout)
        for r in args.route
    )
    names = [r.spec.name for r in routes]
    if len(set(names)) != len(names):
        raise SettingsError(f"--route names must be unique, got {', '.join(names)}")
    if not routes and not args.annotations_file:
        raise SettingsError("give --annotations-file (Kubernetes mode) or --route (static mode)")
    if routes and args.annotations_file:
        raise SettingsError("--route (static mode) and --annotations-file cannot be combined")
    namespace = env.get("POD_NAMESPACE", "")
    if not routes and not namespace:
        raise SettingsError("POD_NAMESPACE must be set in Kubernetes mode")
    if args.max_json_body < 1:
        raise SettingsError(f"invalid value '{args.max_json_body}' for --max-json-body")
    if args.static_probe < 0:
        raise SettingsError(f"invalid value '{args.static_probe}' for --static-probe")
    if args.drain_seconds < 0:
        raise SettingsError(f"invalid value '{args.drain_seconds}' for --drain-seconds")
    for flag, seconds in (("--client-idle-timeout", args.client_idle_timeout),
                          ("--client-head-timeout", args.client_head_timeout),
                          ("--client-body-timeout", args.client_body_timeout),
                          ("--connect-timeout", args.connect_timeout)):
        if not seconds > 0:
            raise SettingsError(f"invalid value '{seconds}' for {flag}: expected seconds > 0")
    if args.buffer_budget < 1 << 20:
        raise SettingsError(f"invalid value '{args.buffer_budget}' for --buffer-budget: "
                            "expected bytes >= 1048576")
    try:
        max_connections = parse_max_connections(MAX_CONNECTIONS, str(args.max_connections))
    except AnnotationError as err:
        raise SettingsError(f"invalid value '{args.max_connections}' for --max-connections: "
                            f"{err.why}") from None
    static_slots = parse_slot_map(args.slot_map, args.slot_epoch) if args.slot_map else None
    return Settings(
        static_slots=static_slots,
        listen=parse_hostport("--listen", args.listen),
        admin=None if args.admin == "off" else parse_hostport("--admin", args.admin),
        static_routes=routes,
        annotations_file=args.annotations_file,
        kubeconfig=args.kubeconfig or env.get("KUBECONFIG") or None,
        pod_name=env.get("POD_NAME", ""),
        pod_namespace=namespace,
        drain_seconds=args.drain_seconds,
        client_idle_seconds=args.client_idle_timeout,
        client_head_seconds=args.client_head_timeout,
        client_body_seconds=args.client_body_timeout,
        connect_timeout=args.connect_timeout,
        max_connections=max_connections,
        buffer_budget=args.buffer_budget,
        max_json_body=args.max_json_body,
        static_probe_seconds=args.static_probe,
        log_level=args.log_level,
    )


def parse_slot_map(value: str, epoch: str) -> SlotMap:
    """``--slot-map S:ASSIGNMENT`` at ``--slot-epoch``."""
    count, _, assignment = value.partition(":")
    try:
        smap = parse_slot_annotations({SLOTS: count, ASSIGNMENT: assignment, EPOCH: epoch})
    except SlotError as err:
        raise SettingsError(f"invalid value '{value}' for --slot-map: {err}") from None
    assert smap is not None
    return smap
