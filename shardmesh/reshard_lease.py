"""``shard.io/reshard-lease``: who may reshard a StatefulSet, and until when. Pure.

Text: ``holder=<id>,expires=<RFC 3339 UTC>``, e.g.
``holder=alice@laptop/4242/9f3c,expires=2026-05-01T12:00:30Z``. The holder is
one run of ``shardmesh reshard``; it renews the lease while it works. Writing
the lease never changes ``shard.io/epoch``: it is not part of the map.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal

from sidecar.slots import LEASE, SlotError

_HOLDER = re.compile(r"[A-Za-z0-9._@/:+-]{1,128}")

Verdict = Literal["mine", "free", "expired", "held"]


@dataclass(frozen=True)
class Lease:
    holder: str
    #: Seconds since the epoch (UTC), whole seconds as written.
    expires: float

    def __str__(self) -> str:
        when = dt.datetime.fromtimestamp(self.expires, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"holder={self.holder},expires={when}"


def valid_holder(holder: str) -> bool:
    return _HOLDER.fullmatch(holder) is not None


def parse_lease(value: str) -> Lease:
    fields: dict[str, str] = {}
    for item in value.split(","):
        name, sep, text = item.strip().partition("=")
        if not sep or name not in ("holder", "expires") or name in fields:
            raise SlotError(LEASE, value, "expected holder=<id>,expires=<RFC 3339 time>")
        fields[name] = text.strip()
    if set(fields) != {"holder", "expires"}:
        raise SlotError(LEASE, value, "expected holder=<id>,expires=<RFC 3339 time>")
    if not valid_holder(fields["holder"]):
        raise SlotError(LEASE, value, f"holder '{fields['holder']}' is not 1-128 characters "
                        "of letters, digits and ._@/:+-")
    try:
        when = dt.datetime.fromisoformat(fields["expires"])
    except ValueError:
        raise SlotError(LEASE, value, f"expires '{fields['expires']}' is not an RFC 3339 "
                        "time such as 2026-05-01T12:00:30Z") from None
    if when.tzinfo is None:
        raise SlotError(LEASE, value, f"expires '{fields['expires']}' has no time zone")
    return Lease(fields["holder"], when.timestamp())


def verdict(lease: Lease | None, me: str, now: float) -> Verdict:
    """Whether ``me`` may reshard now: ``held`` means another live run has it."""
    if lease is None:
        return "free"
    if lease.holder == me:
        return "mine"
    return "expired" if lease.expires <= now else "held"


def granted(me: str, now: float, ttl: float) -> Lease:
    return Lease(me, float(int(now + ttl)))
