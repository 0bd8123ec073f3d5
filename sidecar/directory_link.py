"""What a route's directory stream knows, and every decision about it: pure, no I/O.

``directory_source`` does the I/O (the stream, the clock, the map); this module
says what a line means, when the map is stale, how long to wait before the next
connect, which replica to try and what to resume from (README, "The directory").

- A map is *confirmed* by a snapshot, or by a heartbeat of a synced directory
  that names the very (source, generation) the route applied. A heartbeat of a
  directory that has no map yet (``synced: false``: a restart while the API
  server is down) confirms nothing.
- A stream that ends, or says nothing for ``MISSED_HEARTBEATS`` heartbeat
  intervals, is lost: the route keeps its map, stale since its last
  confirmation, until a new stream confirms it again. Nothing here ever drops
  or invents an ordinal: only the directory's own snapshots change the map.
- A snapshot is taken only for the route's own namespace and StatefulSet.
- Trust follows the directory's CA rotation: a line's ``trust`` (the CA bundle
  the directory now serves under), received over a stream verified with a CA
  the sidecar trusts, is added to the CAs it trusts for its next connections
  (``directory_source.Trust``). A directory whose certificate no trusted CA
  signed (the sidecar missed the rotation's whole overlap) is a ``ca_mismatch``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from directory.maps import Inputs, from_wire
from sidecar.annotations import RouteSpec
from sidecar.discovery import StatefulSetInfo

Obj = dict[str, Any]
Applied = tuple[str, int]

#: Heartbeat intervals without a line after which a stream counts as lost (README).
MISSED_HEARTBEATS = 3
#: Reconnect delays: doubling from the first, jittered, capped; refusals (401/403:
#: RBAC or a token being fixed) wait longer so they do not load the API server's reviews.
BACKOFF_FIRST, BACKOFF_CAP, REFUSED_CAP = 0.2, 5.0, 30.0


@dataclass(frozen=True)
class Link:
    """One route's stream state; replaced whole by the functions below."""

    #: (source, generation) of the last snapshot applied: what a reconnect resumes from.
    applied: Applied | None = None
    #: A snapshot of the directory was applied once (the map is the directory's).
    synced: bool = False
    #: The current stream has confirmed the map.
    connected: bool = False
    #: Wall-clock time of the last confirmation (0: never).
    confirmed_at: float = 0.0
    #: Wall-clock time since which the map is stale (None: it is not).
    stale_since: float | None = None
    #: Streams lost since the last confirmation (drives the backoff and the replica).
    failures: int = 0
    #: Why the last stream ended, or why the last snapshot was refused ("" if neither).
    error: str = ""


def idle_timeout(heartbeat_s: float) -> float:
    """How long a stream may be silent before it counts as lost."""
    return MISSED_HEARTBEATS * heartbeat_s


def resume(link: Link) -> tuple[str | None, int | None]:
    """The ``source`` and ``generation`` parameters of the next subscription."""
    return link.applied if link.applied is not None else (None, None)


def backoff_delay(failures: int, cap: float, draw: Callable[[float, float], float]) -> float:
    """The wait before connect number ``failures + 1``: ``BACKOFF_FIRST`` doubled per
    failure up to ``cap``, drawn from [d/2, d] so that sidecars spread out."""
    ceiling = min(cap, BACKOFF_FIRST * 2.0 ** min(max(failures - 1, 0), 30))
    return draw(ceiling / 2, ceiling)


def pick_url(urls: tuple[str, ...], failures: int) -> str:
    """The next replica: the same one while it works, the next after each failure."""
    return urls[failures % len(urls)]


def snapshot_key(message: Obj) -> Applied | None:
    source, generation = message.get("source"), message.get("generation")
    if isinstance(source, str) and type(generation) is int:
        return source, generation
    return None


def confirms(link: Link, message: Obj) -> bool:
    """Whether a heartbeat says the map the route holds is the directory's current one."""
    return (message.get("type") == "heartbeat" and message.get("synced") is True
            and link.applied is not None and snapshot_key(message) == link.applied)


def confirmed(link: Link, applied: Applied, now: float) -> Link:
    return replace(link, applied=applied, synced=True, connected=True, confirmed_at=now,
                   stale_since=None, failures=0, error="")


def lost(link: Link, why: str) -> Link:
    """The stream ended: the map (if any) is stale since it was last confirmed."""
    stale = link.stale_since
    if stale is None and link.synced:
        stale = link.confirmed_at
    return replace(link, connected=False, stale_since=stale, failures=link.failures + 1,
                   error=why)


def stale(link: Link) -> bool:
    return link.stale_since is not None


def accept(spec: RouteSpec, doc: object) -> Inputs | str:
    """The map's inputs for ``snapshot``, or why it must not be used (another route's
    namespace or StatefulSet, or a malformed map)."""
    backend = spec.backend
    if not isinstance(doc, dict):
        return f"directory sent a map that is not an object: {str(doc)[:80]}"
    got = (doc.get("namespace"), doc.get("statefulset"))
    if got != (backend.namespace, backend.statefulset):
        return (f"directory sent the map of {got[0]}/{got[1]} for route {spec.name}, which is "
                f"{backend.namespace}/{backend.statefulset}: refused")
    try:
        return from_wire(doc)
    except ValueError as err:
        return str(err)


def with_slots(inputs: Inputs, remote_problem: str) -> StatefulSetInfo | None:
    """The StatefulSet as ``discovery.snapshot`` takes it, slot map included, so that the
    shard map decides as for a direct watch (``slot_state.next_slots``: the epoch only
    grows, a bad map keeps the last good one). ``slots`` on the wire is the directory's
    last good map; none with a ``slot_problem`` (a replica that never had a good one)
    is passed on as the error, which keeps the sidecar's own last good map."""
    if inputs.sts is None:
        return None
    error = remote_problem if inputs.slot_map is None else ""
    return dataclasses.replace(inputs.sts, slots=inputs.slot_map, slot_error=error)


def mode_for(annotated: str | None, has_directory: bool) -> str:
    """A route's discovery: its annotation, else the directory when the sidecar knows one."""
    if annotated is not None:
        return annotated
    return "directory" if has_directory else "direct"


def trust_of(message: Obj) -> str | None:
    """The CA bundle a line carries (PEM), if any."""
    trust = message.get("trust")
    return trust if isinstance(trust, str) and trust else None


def ca_mismatch(url: str, detail: str, cas: int) -> str:
    """Why a stream was refused at the TLS handshake: the error a stale pod reports."""
    return (f"{url}: CA mismatch: the directory's certificate is not signed by any of the "
            f"{cas} CA(s) this sidecar trusts ({detail}). The directory's CA was rotated "
            "while this sidecar was not connected (it missed the whole overlap): restart "
            "the pod to get the current CA bundle from the webhook")


def describe(link: Link, url: str, iso: Callable[[float], str], trusted_cas: int = 0) -> Obj:
    """The route's fields in ``/_shard/routes``."""
    return {
        "discovery": "directory", "stale": stale(link),
        "stale_since": iso(link.stale_since) if link.stale_since is not None else None,
        "directory": {"url": url, "connected": link.connected,
                      "source": link.applied[0] if link.applied else None,
                      "generation": link.applied[1] if link.applied else None,
                      "confirmed_at": iso(link.confirmed_at) if link.confirmed_at else None,
                      "trusted_cas": trusted_cas, "error": link.error or None},
    }
