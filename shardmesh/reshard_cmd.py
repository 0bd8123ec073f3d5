"""``shardmesh reshard <sts> --to N | --init``: move slots between a StatefulSet's pods (SPEC §6).

A loop over pure decisions (shardmesh/reshard_steps.py): read the
StatefulSet, decide the next step, make it, read again. Progress goes to
stdout; a refusal exits 1 with a message naming what is wrong, a bad flag 2.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import secrets
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import urllib3

from shardmesh.reshard_kube import (
    Conflict,
    HandoffAnswer,
    Kube,
    KubeError,
    StatefulSetView,
    load_client,
)
from shardmesh.reshard_lease import Lease, granted, parse_lease, valid_holder, verdict
from shardmesh.reshard_plan import DEFAULT_BATCH, plan
from shardmesh.reshard_steps import (
    Begin,
    Done,
    Finish,
    Handoff,
    Patch,
    Refuse,
    begin_patch,
    flip_patch,
    init_step,
    next_step,
    pods_needed,
)
from sidecar.slots import LEASE, SlotError, SlotMap, format_assignment, format_slot_list, parse


class Failure(Exception):
    """Stop: the message says what and names the object."""


@dataclass(frozen=True)
class ReshardSettings:
    statefulset: str
    namespace: str
    to: int | None
    port: int | None
    batch: int
    dry_run: bool
    kubeconfig: str | None
    init: bool
    force: bool
    lease_seconds: float
    handoff_timeout: float
    holder: str


def default_holder() -> str:
    user = "".join(c for c in getpass.getuser() if c.isalnum()) or "user"
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in ".-") or "host"
    return f"{user}@{host[:40]}/{os.getpid()}/{secrets.token_hex(3)}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shardmesh reshard", description=__doc__.splitlines()[0])
    p.add_argument("statefulset")
    p.add_argument("--to", type=int, help="balance the slots over N ordinals (start..start+N-1)")
    p.add_argument("--init", action="store_true",
                   help="write the first assignment over the current replicas, at epoch 1")
    p.add_argument("--namespace", "-n", default="default")
    p.add_argument("--port", type=int, help="the backends' port (default: the first "
                   "containerPort of the pod template)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="slots per batch (8)")
    p.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    p.add_argument("--kubeconfig", help="default: KUBECONFIG, ~/.kube/config, in-cluster")
    p.add_argument("--force", action="store_true",
                   help="take over the reshard lease even if another run holds it")
    p.add_argument("--lease-seconds", type=float, default=30.0,
                   help="how long the lease lasts without renewal (30)")
    p.add_argument("--handoff-timeout", type=float, default=300.0,
                   help="seconds to wait for one handoff (300)")
    p.add_argument("--holder", help="this run's name in the lease (default user@host/pid/random)")
    return p


def settings_from(argv: list[str]) -> ReshardSettings:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.init == (a.to is not None):
        parser.error("give exactly one of --to N and --init")
    if a.to is not None and a.to < 1:
        parser.error(f"--to must be >= 1, got {a.to}")
    if a.batch < 1:
        parser.error(f"--batch must be >= 1, got {a.batch}")
    if a.port is not None and not 1 <= a.port <= 65535:
        parser.error(f"--port must be in 1..65535, got {a.port}")
    if a.lease_seconds < 2 or a.handoff_timeout <= 0:
        parser.error("--lease-seconds must be >= 2 and --handoff-timeout > 0")
    holder = a.holder or default_holder()
    if not valid_holder(holder):
        parser.error(f"--holder '{holder}' must be 1-128 characters of letters, digits, ._@/:+-")
    return ReshardSettings(a.statefulset, a.namespace, a.to, a.port, a.batch, a.dry_run,
                           a.kubeconfig, a.init, a.force, a.lease_seconds, a.handoff_timeout,
                           holder)


class Reshard:
    """One run. ``say`` prints progress; ``clock`` is wall time (leases are absolute)."""

    def __init__(self, settings: ReshardSettings, kube: Kube, say: Callable[[str], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.s, self.kube, self.say, self.clock = settings, kube, say, clock
        self.what = f"statefulset {settings.namespace}/{settings.statefulset}"
        self.held = False  # this run has held the lease at some point
        #: Steps this run made (migrate and flip writes, handoffs answered 200, write
        #: conflicts), printed when it is done: the reshard's counters for a log scraper.
        self.steps: Counter[str] = Counter()

    # ---- reading -------------------------------------------------------------------------

    def _read(self) -> tuple[StatefulSetView, SlotMap | None, Lease | None]:
        try:
            view = self.kube.read()
            smap = parse(view.annotations, view.start)
        except (KubeError, SlotError) as err:
            raise Failure(f"{self.what}: {err}") from None
        text = view.annotations.get(LEASE)
        try:
            lease = parse_lease(text) if text else None
        except SlotError as err:
            if not self.s.force:
                raise Failure(f"{self.what}: {err} (--force replaces it)") from None
            lease = Lease("unreadable", 0.0)  # expired: taken over below
        return view, smap, lease

    def _port(self, view: StatefulSetView) -> int:
        port = self.s.port or view.port
        if port is None:
            raise Failure(f"{self.what} declares no containerPort: give --port")
        return port

    # ---- the commands --------------------------------------------------------------------

    def init(self) -> None:
        while True:
            view, smap, _ = self._read()
            decided = init_step(smap, view.start, view.replicas)
            if isinstance(decided, Refuse):
                raise Failure(f"{self.what}: {decided.message}")
            if isinstance(decided, Done):
                self.say(f"{self.what} already has its first assignment "
                         f"{format_assignment(decided.assignment)} (epoch {decided.epoch})")
                return
            if self.s.dry_run:
                self.say(f"would write {decided}")
                return
            try:
                self.kube.write(decided, view.resource_version)
            except Conflict:
                self.say("conflict: the statefulset changed meanwhile; reading it again")
                continue
            except KubeError as err:
                raise Failure(str(err)) from None
            self.say(f"{self.what}: initial assignment {decided['shard.io/assignment']} "
                     f"at epoch {decided['shard.io/epoch']}")
            return

    def dry_run(self) -> None:
        view, smap, lease = self._read()
        assert self.s.to is not None
        step = next_step(smap, view.start, self.s.to, self.s.batch)
        if isinstance(step, Refuse):
            raise Failure(f"{self.what}: {step.message}")
        assert smap is not None and smap.assignment is not None
        if lease is not None:
            self.say(f"lease: {lease}")
        if isinstance(step, Finish):
            self.say(f"in flight at epoch {smap.epoch} (a run would finish it first): "
                     + "; ".join(f"{format_slot_list(h.slots)} {h.source} -> {h.target}"
                                 for h in step.handoffs))
        moves = plan(smap.assignment, view.start, self.s.to, self.s.batch)
        self.say(f"{self.what}: {smap.slots} slots, epoch {smap.epoch}, "
                 f"{format_assignment(smap.assignment)}")
        self.say(f"plan for ordinals {view.start}..{view.start + self.s.to - 1}: "
                 f"{sum(len(m.slots) for m in moves)} slots in {len(moves)} batches "
                 "(dry run: nothing changed)")
        self.say(f"{'slots':<24} {'from':>5} {'to':>5}")
        for m in moves:
            self.say(f"{format_slot_list(m.slots):<24} {m.source:>5} {m.target:>5}")

    def run(self) -> None:
        try:
            self._run()
        except Failure:
            self._release()
            raise

    def _release(self) -> None:
        """Best effort, on a refusal: let the next run start at once (state is all in the
        annotations, so a batch left in flight is finished by whoever runs next)."""
        if not self.held:
            return
        for _ in range(3):
            try:
                view, _, lease = self._read()
            except Failure:
                return
            if verdict(lease, self.s.holder, self.clock()) != "mine":
                return
            with contextlib.suppress(Failure):
                if self._write({LEASE: None}, view, "lease released"):
                    return

    def _run(self) -> None:
        assert self.s.to is not None
        announced = False
        while True:
            view, smap, lease = self._read()
            last = view.start + self.s.to - 1
            if last >= view.start + view.replicas:
                raise Failure(f"{self.what} has {view.replicas} replicas (ordinals {view.start}.."
                              f"{view.start + view.replicas - 1}), --to {self.s.to} needs "
                              f"ordinal {last}: scale it out first (reshard never scales)")
            status = verdict(lease, self.s.holder, self.clock())
            if status == "held" and (self.held or not self.s.force):
                assert lease is not None
                if self.held:
                    raise Failure(f"{self.what}: the reshard lease was taken over by "
                                  f"{lease.holder}; stopping")
                raise Failure(f"{self.what}: another reshard holds the lease ({lease}); "
                              "wait for it, or use --force if it is dead")
            step = next_step(smap, view.start, self.s.to, self.s.batch)
            if isinstance(step, Refuse):
                raise Failure(f"{self.what}: {step.message}")
            if not announced and smap is not None and smap.assignment is not None:
                announced = True
                self.say(f"{self.what}: {smap.slots} slots at epoch {smap.epoch}; balancing "
                         f"over ordinals {view.start}..{last}")
            if isinstance(step, Done):
                if status == "mine":
                    self._write({LEASE: None}, view)
                self.say(f"done at epoch {step.epoch}: {format_assignment(step.assignment)}")
                self.say("steps this run: " + ", ".join(
                    f"{self.steps[k]} {k}" for k in ("migrate", "handoff", "flip", "conflict")))
                return
            if status != "mine":
                taking = {"expired": " (the last holder's lease expired)",
                          "held": " (--force)"}.get(status, "")
                if self._write({}, view):
                    self.held = True
                    self.say(f"lease taken by {self.s.holder}{taking}")
                continue
            self._check_pods(step)
            if isinstance(step, Begin):
                if self._write(begin_patch(step), view,
                               f"epoch {step.epoch}: {step.move} in flight "
                               f"({step.remaining} more batches after this one)"):
                    self.steps["migrate"] += 1
            else:
                assert smap is not None
                if self._finish(step, smap, view):
                    continue

    # ---- steps ---------------------------------------------------------------------------

    def _write(self, patch: Patch, view: StatefulSetView, done: str = "") -> bool:
        """Write ``patch`` plus a renewed lease (none when releasing); False on a conflict."""
        if LEASE not in patch:
            patch = {**patch, LEASE: str(granted(self.s.holder, self.clock(),
                                                 self.s.lease_seconds))}
        try:
            self.kube.write(patch, view.resource_version)
        except Conflict:
            self.steps["conflict"] += 1
            self.say("conflict: the statefulset changed meanwhile; reading it again")
            return False
        except KubeError as err:
            raise Failure(str(err)) from None
        if done:
            self.say(done)
        return True

    def _check_pods(self, step: Begin | Finish) -> None:
        for ordinal in pods_needed(step):
            pod = self.kube.pod(ordinal)
            if pod.problem:
                raise Failure(f"pod {self.s.namespace}/{pod.name} (ordinal {ordinal}) takes part "
                              f"in the next batch but {pod.problem}; nothing was changed for it")

    def _finish(self, step: Finish, smap: SlotMap, view: StatefulSetView) -> bool:
        port = self._port(view)
        for h in step.handoffs:
            answer = self._handoff(h, step.epoch, port)
            pod = f"{self.s.statefulset}-{h.source}"
            if answer.status == 409:
                raise Failure(f"pod {self.s.namespace}/{pod} refused the handoff of slots "
                              f"{format_slot_list(h.slots)} to {h.target} (409: it never owned "
                              f"them): {answer.body.strip()[:300]}")
            if answer.status != 200:
                raise Failure(f"handoff of slots {format_slot_list(h.slots)} by pod "
                              f"{self.s.namespace}/{pod} failed: {answer.status} "
                              f"{answer.body.strip()[:300]}")
            self.steps["handoff"] += 1
            self.say(f"  handoff {format_slot_list(h.slots)} {h.source} -> {h.target} at epoch "
                     f"{step.epoch}: 200 {answer.body.strip()[:200]}")
        flipped = self._write(flip_patch(smap, step), view,
                              f"epoch {step.epoch}: slots now owned by their new ordinals")
        self.steps["flip"] += flipped
        return flipped

    def _handoff(self, h: Handoff, epoch: int, port: int) -> HandoffAnswer:
        """The handoff call, renewing the lease meanwhile (a data move may outlast it)."""
        target = self.kube.pod(h.target)
        body = {"slots": list(h.slots), "to": h.target, "epoch": epoch, "from": h.source,
                "address": f"{target.ip}:{port}"}
        result: list[HandoffAnswer] = []

        def call() -> None:
            try:
                result.append(self.kube.handoff(f"{self.s.statefulset}-{h.source}", port, body,
                                                self.s.handoff_timeout))
            except (urllib3.exceptions.HTTPError, OSError) as err:
                result.append(HandoffAnswer(0, f"no answer: {err}"))

        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(self.s.lease_seconds / 3)
            if worker.is_alive():
                self._renew()
        return result[0]

    def _renew(self) -> None:
        for _ in range(5):
            view, _, lease = self._read()
            if verdict(lease, self.s.holder, self.clock()) not in ("mine", "free", "expired"):
                return  # taken over: the next read of the main loop stops this run
            if self._write({}, view):
                return


def main(argv: list[str]) -> int:
    settings = settings_from(argv)
    try:
        kube = Kube(load_client(settings.kubeconfig), settings.namespace, settings.statefulset)
        job = Reshard(settings, kube, lambda line: print(line, flush=True))
        if settings.init:
            job.init()
        elif settings.dry_run:
            job.dry_run()
        else:
            job.run()
    except (Failure, KubeError) as err:
        print(f"shardmesh reshard: {err}", file=sys.stderr)
        return 1
    except (urllib3.exceptions.HTTPError, OSError) as err:
        print(f"shardmesh reshard: the API server did not answer: {err}", file=sys.stderr)
        return 1
    return 0

