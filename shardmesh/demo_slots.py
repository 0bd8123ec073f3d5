"""The demo's second act: slot mode (SPEC §6) on this machine, with no cluster.

1. Three replicas in slot mode (64 slots, ``--slot-map``); deposits go through the
   sidecar, each carrying its slot and the map's epoch.
2. Scale to 4: a fourth replica and the sidecar with four addresses, the same map.
   Every account is answered by the same replica as before; the new one holds
   nothing (default mode would have moved most accounts to replicas without them).
3. Reshard to 4 with the planner and steps ``shardmesh reshard`` uses: per batch,
   epoch+1 with the batch in flight, ``POST /_shard/handoff`` to the old owner
   (which sends the accounts to the new one and refuses those slots from then
   on), epoch+1 with the new owner. A deposit routed by the old map meanwhile is
   refused by the old owner (421) and answered 503, never applied there.
4. Shows which accounts moved, and proves from the replicas' own state that each
   lives on exactly one replica, its slot's owner, with every deposit.

In a cluster the map lives on the StatefulSet and every sidecar's watch delivers
each epoch (holding requests for slots in flight). A static sidecar has no watch:
it takes a new map by being restarted with the new ``--slot-map``/``--slot-epoch``,
so here the in-flight epoch is only in the output, and no request is sent while
a batch is in flight except the one that shows the fencing.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from shardmesh.accounts_backend import AccountsBackend
from shardmesh.demo import (
    ROUTE,
    DemoFailure,
    Running,
    heading,
    request,
    say,
    sidecar,
)
from shardmesh.reshard_plan import Move, plan
from shardmesh.reshard_steps import Begin, Finish, Patch, begin_patch, flip_patch, in_flight
from sidecar import slots as sl
from sidecar.shardfn import Strategy, ordinal_for

SLOTS = 64
BATCH = 8
#: A request refused with 421 waits this long for a newer map before its 503 (the
#: static sidecar never gets one; in a cluster the watch brings it in milliseconds).
TIMEOUT = "1s"


def slot_args(smap: sl.SlotMap) -> list[str]:
    assert smap.assignment is not None
    return ["--slot-map", f"{smap.slots}:{sl.format_assignment(smap.assignment)}",
            "--slot-epoch", str(smap.epoch), "--timeout", TIMEOUT]


def slot_map(assignment: sl.Assignment, epoch: int) -> sl.SlotMap:
    smap = sl.parse({sl.SLOTS: str(assignment.slots), sl.EPOCH: str(epoch),
                     sl.ASSIGNMENT: sl.format_assignment(assignment)})
    assert smap is not None
    return smap


def patched(smap: sl.SlotMap, patch: Patch) -> sl.SlotMap:
    """The map after one of ``shardmesh reshard``'s annotation writes."""
    annotations: dict[str, str | None] = {**smap.annotations(), **patch}
    after = sl.parse({k: v for k, v in annotations.items() if v is not None})
    assert after is not None
    return after


@contextlib.contextmanager
def slot_replicas(strategy: Strategy, first: sl.Assignment) -> Iterator[list[AccountsBackend]]:
    """Four replicas seeded with the first assignment (each knows the slots it never
    owned); the demo routes to the fourth only once it has "scaled" to 4."""
    started: list[AccountsBackend] = []
    try:
        for i in range(4):
            backend = AccountsBackend("127.0.0.1", 0, i, strategy)
            backend.ledger.seed(SLOTS, sl.format_assignment(first))
            started.append(backend.start())
        yield started
    finally:
        for backend in started:
            with contextlib.suppress(Exception):
                backend.stop()


def deposit_all(port: int, accounts: list[str], deposits: Counter[str]) -> dict[str, str]:
    """One deposit per account; account -> the replica that answered."""
    answered: dict[str, str] = {}
    for account in accounts:
        status, _, body = request(port, "POST", f"/{ROUTE}/accounts/{account}/deposit")
        if status != 200:
            raise DemoFailure(f"deposit for account {account} answered {status}: {body}")
        deposits[account] += 1
        answered[account] = body["replica"]
    return answered


def resolve(running: Running, account: str) -> dict[str, Any]:
    status, _, body = request(running.port, "GET",
                              f"/_shard/resolve?route={ROUTE}&key={account}")
    if status != 200 or not isinstance(body, dict):
        raise DemoFailure(f"/_shard/resolve for {account}: {status} {body}")
    return body


def handoff(source: AccountsBackend, target: AccountsBackend, slots: tuple[int, ...],
            epoch: int) -> dict[str, Any]:
    """What ``shardmesh reshard`` asks the old owner (through the API server in a cluster)."""
    host, port = source.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/_shard/handoff", json.dumps({
            "slots": list(slots), "to": target.ledger.ordinal, "epoch": epoch,
            "from": source.ledger.ordinal, "address": target.address}))
        response = conn.getresponse()
        answer: dict[str, Any] = json.loads(response.read())
    finally:
        conn.close()
    if response.status != 200:
        raise DemoFailure(f"handoff of {sl.format_slot_list(slots)} by "
                          f"{source.ledger.name}: {response.status} {answer}")
    return answer


def show_fencing(running: Running, backends: list[AccountsBackend], move: Move,
                 accounts: list[str], strategy: Strategy, epoch: int) -> None:
    """A deposit by the old map after the handoff: refused by the old owner, not applied."""
    account = next(a for a in accounts if sl.slot_for(a, strategy, SLOTS) in move.slots)
    old = backends[move.source].ledger
    with old.lock:
        refused = old.refused
    began = time.monotonic()
    status, headers, body = request(running.port, "POST", f"/{ROUTE}/accounts/{account}/deposit")
    with old.lock:
        refused_now, still_there = old.refused, account in old.counters
    say(f"  a deposit for account {account} still routed by epoch {epoch - 2}: "
        f"{old.name} refused it (421, it is at epoch {epoch}), the sidecar waited "
        f"{time.monotonic() - began:.1f}s for that epoch, then answered HTTP {status} "
        f"{body.get('error') if isinstance(body, dict) else body}, Retry-After: "
        f"{headers.get('retry-after')}")
    if status != 503 or refused_now != refused + 1 or still_there:
        raise DemoFailure(f"expected the old owner to refuse (421) and the sidecar to answer "
                          f"503; got {status} {body}, refused {refused} -> {refused_now}")


def run(accounts: list[str], strategy: Strategy, listen_port: int, shown: int) -> None:
    heading(f"Slot mode (SPEC §6): {SLOTS} slots, a map the replicas own, changed by reshard")
    first = sl.initial(SLOTS, 0, 3)
    smap = slot_map(first, 1)
    deposits: Counter[str] = Counter()
    with slot_replicas(strategy, first) as backends:
        addresses = [b.address for b in backends]
        with sidecar(addresses[:3], strategy, listen_port, slot_args(smap)) as running:
            before = deposit_all(running.port, accounts, deposits)
            info = resolve(running, accounts[0])
        say(f"  /_shard/resolve for account {accounts[0]}: slot {info['slot']} of "
            f"{info['slots']}, epoch {info['epoch']}, ordinal {info['ordinal']}")

        heading("Scale to 4 with slots: a new replica owns nothing until a reshard")
        with sidecar(addresses, strategy, listen_port, slot_args(smap),
                     "four replicas, the same map") as running:
            after = deposit_all(running.port, accounts, deposits)
        moved = [a for a in accounts if after[a] != before[a]]
        by_modulo = sum(ordinal_for(a, strategy, 3) != ordinal_for(a, strategy, 4)
                        for a in accounts)
        with backends[3].ledger.lock:
            new_holds = len(backends[3].ledger.counters)
        say(f"  {len(accounts) - len(moved)} of {len(accounts)} accounts answered by the same "
            f"replica as before; {backends[3].ledger.name} holds {new_holds} "
            f"(default mode would have moved {by_modulo} of them to replicas without their data)")
        if moved or new_holds:
            raise DemoFailure(f"scaling moved accounts {moved[:5]} (new replica holds "
                              f"{new_holds})")

        heading("shardmesh reshard --to 4: the planner's batches, each migrate -> handoff -> "
                "flip")
        moves = plan(first, 0, 4, BATCH)
        say(f"  {sum(len(m.slots) for m in moves)} of {SLOTS} slots move, in {len(moves)} "
            f"batches:")
        say(f"    {'slots':<10} {'from':>4} {'to':>4}")
        for m in moves:
            say(f"    {sl.format_slot_list(m.slots):<10} {m.source:>4} {m.target:>4}")
        for n, move in enumerate(moves):
            begin = Begin(move, smap.epoch + 1, len(moves) - n - 1)
            say(f"  epoch {begin.epoch}: slots {sl.format_slot_list(move.slots)} in flight "
                f"({move.source} -> {move.target}; a cluster's sidecars hold them now)")
            migrating = patched(smap, begin_patch(begin))
            finish = Finish(in_flight(migrating.migrating), begin.epoch + 1)
            for h in finish.handoffs:
                answer = handoff(backends[h.source], backends[h.target], h.slots, finish.epoch)
                say(f"    handoff to {backends[h.source].ledger.name}: {answer['moved']} "
                    f"accounts sent to {backends[h.target].ledger.name}")
            if n == 0:  # the sidecar still runs the old map: show the fence
                with sidecar(addresses, strategy, listen_port, slot_args(smap),
                             "still the map before the batch") as running:
                    show_fencing(running, backends, move, accounts, strategy, finish.epoch)
            smap = patched(migrating, flip_patch(migrating, finish))
            say(f"  epoch {finish.epoch}: ordinal {move.target} owns them")
        with sidecar(addresses, strategy, listen_port, slot_args(smap),
                     "restarted with the new map: a static sidecar has no watch") as running:
            final = deposit_all(running.port, accounts, deposits)
            mover = next((a for a in accounts if final[a] != before[a]), accounts[0])
            info = resolve(running, mover)
        say(f"  /_shard/resolve for account {mover}: slot {info['slot']}, epoch "
            f"{info['epoch']}, ordinal {info['ordinal']}")
        prove(backends, accounts, strategy, smap, before, final, deposits, shown)


def prove(backends: list[AccountsBackend], accounts: list[str], strategy: Strategy,
          smap: sl.SlotMap, before: dict[str, str], final: dict[str, str],
          deposits: Counter[str], shown: int) -> None:
    moved = [a for a in accounts if final[a] != before[a]]
    heading(f"Which accounts moved ({len(moved)} of {len(accounts)})")
    say(f"  {'account':<8} {'slot':>4}  {'from':<14} {'to':<14} {'counter':>7}")
    for account in moved[:shown]:
        say(f"  {account:<8} {sl.slot_for(account, strategy, SLOTS):>4}  {before[account]:<14} "
            f"{final[account]:<14} {deposits[account]:>7}")
    if len(moved) > shown:
        say(f"  ... and {len(moved) - shown} more")

    heading("Proof, from each replica's own state")
    homes: dict[str, list[int]] = {}
    counts: dict[str, int] = {}
    for backend in backends:
        ledger = backend.ledger
        with ledger.lock:
            held, misrouted, refused = dict(ledger.counters), ledger.misrouted, ledger.refused
        say(f"  {ledger.name}: {len(held):>4} accounts, {sum(held.values()):>4} deposits, "
            f"{misrouted} misrouted (409), {refused} refused (421)")
        if misrouted:
            raise DemoFailure(f"{ledger.name} got {misrouted} requests for keys of another slot")
        for account, count in held.items():
            homes.setdefault(account, []).append(ledger.ordinal)
            counts[account] = count
    for account in accounts:
        owner = smap.owner(sl.slot_for(account, strategy, SLOTS))
        if homes.get(account) != [owner]:
            raise DemoFailure(f"account {account} lives on {homes.get(account)}, not [{owner}]")
        if counts[account] != deposits[account]:
            raise DemoFailure(f"account {account} has {counts[account]} deposits, "
                              f"{deposits[account]} were acknowledged")
    if not moved:
        raise DemoFailure("the reshard moved no account")
    say(f"  every one of {len(accounts)} accounts lives on exactly one replica, its slot's "
        f"owner at epoch {smap.epoch}, with all {sum(deposits.values())} acknowledged deposits")
