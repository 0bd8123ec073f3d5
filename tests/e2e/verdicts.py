"""The end-to-end invariants, as pure functions that list every violation they find.

An *epoch* is a stretch of traffic during which the StatefulSet has one size
N. The backends are in-memory and nothing migrates data, so an account that
changes owner when N changes really does start afresh on its new replica.
"Every account lives on exactly one replica" is therefore checked per epoch:
the ledgers are drained (copied and emptied) at each epoch's start and end,
and what they held in between must match what the app was told.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sidecar.shardfn import Strategy, ordinal_for, pod_ordinal
from tests.e2e.traffic import Answer


@dataclass(frozen=True)
class Holding:
    """What one replica (one process: a restarted pod is a new one) held in an epoch."""

    replica: str
    counters: dict[str, int]


def replica_name(statefulset: str, ordinal: int) -> str:
    return f"{statefulset}-{ordinal}"


def answer_violations(answers: Iterable[Answer], statefulset: str, strategy: Strategy,
                      count: int, down: frozenset[int] = frozenset(), start: int = 0,
                      ) -> list[str]:
    """Each answer is what its owner (the pod ordinal, under N=count and ordinals.start=start)
    should give: 200 from the owner itself, or, if the owner is down, 503
    ``shard_unavailable`` with Retry-After. Never a 409."""
    found: list[str] = []
    for a in answers:
        owner = pod_ordinal(a.account, strategy, count, start)
        body = a.body if isinstance(a.body, dict) else {}
        if a.status == 409:
            found.append(f"account {a.account}: 409 from a replica that does not own it: {a.body}")
        elif owner in down:
            if a.status != 503 or body.get("error") != "shard_unavailable" or not a.retry_after:
                found.append(f"account {a.account} (owner {owner} is down): expected 503 "
                             f"shard_unavailable with Retry-After, got {a.status} "
                             f"Retry-After={a.retry_after!r} {a.body}")
        elif a.status != 200:
            found.append(f"account {a.account} (owner {owner}, up): got {a.status} {a.body}")
        elif (a.shard_ordinal != str(owner)
              or body.get("replica") != replica_name(statefulset, owner)):
            found.append(f"account {a.account}: owner is {owner} of {count}, but X-Shard-Ordinal "
                         f"is {a.shard_ordinal!r} and {body.get('replica')!r} answered")
    return found


def epoch_violations(holdings: Sequence[Holding], answers: Iterable[Answer], statefulset: str,
                     strategy: Strategy, count: int, start: int = 0) -> list[str]:
    """Every account deposited this epoch lives on exactly one replica, its owner under
    N=count, with as many deposits as the app saw succeed; no replica holds anything else."""
    succeeded = Counter(a.account for a in answers if a.status == 200)
    homes: dict[str, list[Holding]] = {}
    for holding in holdings:
        for account in holding.counters:
            homes.setdefault(account, []).append(holding)
    found: list[str] = []
    for account, deposits in sorted(succeeded.items()):
        owner = replica_name(statefulset, pod_ordinal(account, strategy, count, start))
        where = [h.replica for h in homes.get(account, [])]
        if where != [owner]:
            found.append(f"account {account}: expected on [{owner}] only, found on {where}")
        elif homes[account][0].counters[account] != deposits:
            found.append(f"account {account}: {owner} counted "
                         f"{homes[account][0].counters[account]} deposits, the app saw "
                         f"{deposits} succeed")
    for account in sorted(set(homes) - set(succeeded)):
        found.append(f"account {account}: held by {[h.replica for h in homes[account]]} "
                     "though no deposit for it succeeded this epoch")
    return found


def moved(accounts: Iterable[str], strategy: Strategy, before: int, after: int) -> int:
    """How many accounts change owner when N goes from ``before`` to ``after``."""
    return sum(ordinal_for(a, strategy, before) != ordinal_for(a, strategy, after)
               for a in accounts)
