"""The rounds-and-ratios report of ``bench/sidecar.py`` and ``bench/grpc.py`` (printing only).

Each target was measured in interleaved rounds at 1 and 50 connections (or
streams); a ratio is the median over the rounds of that round's ratio against
nginx (``sidecar.round_ratios``), and every round's ratio of the sidecar is
printed too, then its RSS, its CPU per request and the goals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Ratios = dict[str, tuple[list[float], list[float]]]


def middle(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def print_ratio_table(results: Mapping[str, Mapping[int, Any]], ratios: Ratios, rss_kib: int,
                      goals: Mapping[str, float], rate: str = "rps",
                      cpu_per: str = "request", cpu_note: str = "") -> None:
    """``results``: target -> connections (1, 50) -> a result with rps, p50_ms, p99_ms and
    cpu_us; ``rate`` names the rps column (``RPC/s`` for gRPC), ``cpu_per`` the unit of work."""
    print(f"| target | {rate} @1 | p50 @1 | p99 @1 | {rate} @50 | p50 @50 | p99 @50 "
          f"| {rate}@50 / nginx | p50@1 / nginx |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, by_conn in results.items():
        one, fifty = by_conn[1], by_conn[50]
        rps_rounds, p50_rounds = ratios[name]
        print(f"| {name} | {one.rps:,.0f} | {one.p50_ms:.3f} ms | {one.p99_ms:.3f} ms "
              f"| {fifty.rps:,.0f} | {fifty.p50_ms:.3f} ms | {fifty.p99_ms:.3f} ms "
              f"| {middle(rps_rounds):.2f}x | {middle(p50_rounds):.2f}x |")
    side = results["sidecar"]
    rps_rounds, p50_rounds = ratios["sidecar"]
    rps_ratio, p50_ratio = middle(rps_rounds), middle(p50_rounds)
    rss_mb = rss_kib / 1024
    print(f"\nsidecar / nginx in each round: {rate}@50 "
          + " ".join(f"{r:.2f}x" for r in rps_rounds) + "; p50@1 "
          + " ".join(f"{r:.2f}x" for r in p50_rounds))
    print(f"sidecar peak RSS under load: {rss_mb:.1f} MiB; CPU per {cpu_per}: "
          f"{side[1].cpu_us:.1f} us @1, {side[50].cpu_us:.1f} us @50{cpu_note}")
    checks = [
        (f"{rate}@50 >= {goals['rps50']}x nginx", f"{rps_ratio:.2f}x",
         rps_ratio >= goals["rps50"]),
        (f"p50@1 <= {goals['p50_1']}x nginx", f"{p50_ratio:.2f}x", p50_ratio <= goals["p50_1"]),
        (f"RSS <= {goals['rss_mb']} MB", f"{rss_mb:.1f}", rss_mb <= goals["rss_mb"]),
    ]
    print("goals: " + "; ".join(f"{goal}: {got} {'OK' if ok else 'MISSED'}"
                                for goal, got, ok in checks))
