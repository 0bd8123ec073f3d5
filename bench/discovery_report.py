"""What one phase of ``bench/discovery.py`` measured, and the table of all phases (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Phase:
    mode: str  # "directory" or "direct"
    subscribers: int
    sync_s: float = 0.0
    watches_before: float = 0.0
    watches_open: float = 0.0
    api_cpu_connect: float = 0.0
    api_cpu_rollout: float = 0.0
    api_rss_mb: float = 0.0
    scale_at: float = 0.0
    delays: list[float] = field(default_factory=list)  # seconds, sorted
    rollout_s: float = 0.0
    window_s: float = 0.0  # from the scale call to the end of the rollout's count
    caught_up_s: float = 0.0  # from the scale call to the last map any client received
    client_cpu_s: float | None = None  # the clients' process, scale call to caught up
    rollout_requests: float = 0.0
    rollout_events: float = 0.0
    reference_ms: float | None = None  # directory mode: one direct watch beside it
    #: The directory's own API event -> write to a subscriber over the rollout (its histogram):
    #: mean, and the upper bounds of the buckets holding p50 and p99, in ms.
    fanout_ms: tuple[float | None, float | None, float | None] | None = None
    directory_rss_mb: float | None = None
    directory_cpu_s: float | None = None
    relists: dict[str, float] = field(default_factory=dict)
    watch_restarts: dict[str, int] | None = None  # direct mode: the watches' own counts


def percentile(delays: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of sorted ``delays``, in ms."""
    return delays[min(len(delays) - 1, int(q * len(delays)))] * 1000


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def rows(p: Phase) -> list[tuple[str, str]]:
    d = p.delays
    hop = None if p.reference_ms is None or not d else percentile(d, 0.5) - p.reference_ms
    return [
        ("subscribers", f"{p.subscribers}"),
        ("all subscribers have a map after", f"{p.sync_s:.1f} s"),
        ("API-server watches open (before the subscribers)",
         f"{p.watches_open:g} ({p.watches_before:g})"),
        ("  of which the subscribers' (or the directory's)",
         f"{p.watches_open - p.watches_before:+g}"),
        ("API-server CPU while subscribers connect", f"{p.api_cpu_connect:.1f} s"),
        ("API-server CPU during the rollout", f"{p.api_cpu_rollout:.1f} s"),
        ("API-server RSS after the rollout", f"{p.api_rss_mb:.0f} MB"),
        ("rollout (scale +1, then rolling restart)", f"{p.rollout_s:.1f} s"),
        ("the last client has the rollout's last map after", f"{p.caught_up_s:.1f} s"),
        ("CPU of the clients' processes until then", "-" if p.client_cpu_s is None
         else f"{p.client_cpu_s:.1f} s"),
        ("API-server requests during the rollout (per s)",
         f"{p.rollout_requests:g} ({p.rollout_requests / max(p.window_s, 1e-9):.1f}"
         f" over {p.window_s:.1f} s)"),
        ("API-server watch events sent during the rollout", f"{p.rollout_events:g}"),
        ("scale event seen by all: p50", _ms(percentile(d, 0.5) if d else None)),
        ("                         p99", _ms(percentile(d, 0.99) if d else None)),
        ("                         max", _ms(d[-1] * 1000 if d else None)),
        ("one direct watch beside the directory", _ms(p.reference_ms)),
        ("directory's extra hop (p50 - that watch)", _ms(hop)),
        ("the directory's own event -> write (mean, p50, p99)", "-" if p.fanout_ms is None
         else ", ".join("-" if v is None else f"{v:.0f}" if i == 0 else f"<= {v:g}"
                        for i, v in enumerate(p.fanout_ms)) + " ms"),
        ("directory RSS", "-" if p.directory_rss_mb is None
         else f"{p.directory_rss_mb:.0f} MB"),
        ("directory CPU over the phase", "-" if p.directory_cpu_s is None
         else f"{p.directory_cpu_s:.1f} s"),
        ("LISTs after an API-server restart: statefulsets",
         f"{p.relists.get('statefulsets', 0):g}"),
        ("                                   pods", f"{p.relists.get('pods', 0):g}"),
        ("direct watches restarted, by reason", "-" if p.watch_restarts is None else
         " ".join(f"{k} {v}" for k, v in sorted(p.watch_restarts.items())) or "none"),
    ]


def table(phases: list[Phase]) -> str:
    """One column per phase, one row per measure."""
    columns = [rows(p) for p in phases]
    if not columns:
        return ""
    header = ["measure", *(f"{p.mode} mode" for p in phases)]
    body = [[label, *(c[i][1] for c in columns)] for i, (label, _) in enumerate(columns[0])]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in body)])
