"""Backends that follow a StatefulSet's pods, as the pods' processes would.

Rules:
- A reconciler thread lists the StatefulSet's pods every POLL seconds. Each
  live pod ``S-i`` (no deletionTimestamp) gets one ``AccountsBackend`` for its
  own ordinal i (its ``apps.kubernetes.io/pod-index`` label, as a real
  backend would read it; the name's number without it) and the set's
  ``ordinals.start``, bound to the pod's loopback IP; a pod that disappears, or is
  replaced by a new one (new UID), has its backend stopped. A new pod is a new
  process, so it starts with an empty ledger.
- Readiness is earned, like a readiness probe: the simulated kubelet is told
  to keep every pod of the set unready until its backend listens, and only
  then is it readied. Otherwise the sidecar could route to a Ready pod whose
  process is not up yet, which no real kubelet would allow.
- ``hold_down`` keeps a pod unready (a failing probe) until ``release``.
- Every ledger ever started is kept, so no 409 is lost when a replica stops.
- API errors (an apiserver restart) leave everything as it is until the next
  list succeeds.
"""

from __future__ import annotations

import contextlib
import re
import threading

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from shardmesh.accounts_backend import AccountsBackend, Ledger
from sidecar.shardfn import Strategy
from tests.cluster.controlplane import ControlPlane
from tests.cluster.kubelet import Kubelet, raw_json
from tests.e2e.verdicts import Holding

POLL = 0.1
MAX_ORDINALS = 8  # pods S-start..S-(start+7) start unready until their backend is up
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"


class Replicas:
    """The backends of StatefulSet ``name`` in ``namespace``; see the module rules."""

    def __init__(self, cp: ControlPlane, kubelet: Kubelet, namespace: str, name: str,
                 port: int, strategy: Strategy, start: int = 0) -> None:
        self.kubelet, self.namespace, self.name = kubelet, namespace, name
        self.port, self.strategy = port, strategy
        self.ordinals_start = start  # spec.ordinals.start (``start`` is a method)
        self._api = client.CoreV1Api(cp.api_client())
        self._pattern = re.compile(rf"^{re.escape(name)}-(\d+)$")
        self._lock = threading.RLock()
        self._live: dict[str, tuple[str, AccountsBackend]] = {}
        self._ordinals: dict[str, int] = {}  # pod name -> its ordinal, from the last list
        self._readied: set[str] = set()  # pod UIDs already made Ready
        self._ready_names: set[str] = set()  # names last told to the kubelet as ready
        self._held: set[str] = set()
        #: UIDs of pods killed here: a list taken just before the delete still shows
        #: them alive, and must not start a process for them again.
        self._killed: set[str] = set()
        self.ledgers: list[Ledger] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"replicas-{name}")

    def pod_name(self, ordinal: int) -> str:
        return f"{self.name}-{ordinal}"

    def start(self) -> Replicas:
        """Call before creating the StatefulSet: its pods must not be readied too early."""
        for ordinal in range(self.ordinals_start, self.ordinals_start + MAX_ORDINALS):
            self.kubelet.set_ready(self.namespace, self.pod_name(ordinal), False)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            for _, backend in self._live.values():
                backend.stop()
            self._live.clear()

    # ---- what the story does to replicas ------------------------------------------------

    def hold_down(self, ordinal: int) -> None:
        """Make the pod unready (its probe fails) and keep it so, even if it is recreated."""
        with self._lock:
            self._held.add(self.pod_name(ordinal))
            self.kubelet.set_ready(self.namespace, self.pod_name(ordinal), False)
            self._ready_names.discard(self.pod_name(ordinal))

    def release(self, ordinal: int) -> None:
        """Let the pod be readied again once its backend listens."""
        with self._lock:
            self._held.discard(self.pod_name(ordinal))
            self._readied.clear()  # the next sync readies every live, unheld pod again

    def kill(self, ordinal: int) -> None:
        """The process dies and its pod is deleted (the StatefulSet controller recreates it);
        held down, so the replacement stays unready until :meth:`release`."""
        name = self.pod_name(ordinal)
        self.hold_down(ordinal)
        with self._lock:
            entry = self._live.pop(name, None)
            if entry is not None:
                self._killed.add(entry[0])
        if entry is not None:
            entry[1].stop()
        self._api.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)

    def drain(self) -> list[Holding]:
        """Copy and empty every ledger (live or stopped): the holdings of the epoch just ended."""
        holdings = []
        with self._lock:
            ledgers = list(self.ledgers)
        for ledger in ledgers:
            with ledger.lock:
                counters = dict(ledger.counters)
                ledger.counters.clear()
            if counters:
                holdings.append(Holding(ledger.name, counters))
        return holdings

    def misrouted(self) -> int:
        """409s answered by any replica ever started."""
        total = 0
        for ledger in list(self.ledgers):
            with ledger.lock:
                total += ledger.misrouted
        return total

    def live_ordinals(self) -> list[int]:
        with self._lock:
            return sorted(b.ledger.ordinal for _, b in self._live.values())

    # ---- reconciliation -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(ApiException, urllib3.exceptions.HTTPError, OSError):
                self.sync()
            self._stop.wait(POLL)

    def sync(self) -> None:
        pods = raw_json(self._api.list_namespaced_pod(self.namespace, _preload_content=False,
                                                      _request_timeout=5))["items"]
        alive: dict[str, str] = {}
        ordinals: dict[str, int] = {}
        for p in pods:
            meta = p["metadata"]
            match = self._pattern.match(meta["name"])
            if meta.get("deletionTimestamp") or not match:
                continue
            alive[meta["name"]] = meta["uid"]
            ordinals[meta["name"]] = int((meta.get("labels") or {}).get(POD_INDEX_LABEL)
                                         or match[1])
        with self._lock:
            self._ordinals.update(ordinals)
            for name, (uid, backend) in list(self._live.items()):
                if alive.get(name) != uid:
                    del self._live[name]
                    backend.stop()
            for name, uid in alive.items():
                if uid in self._killed:
                    continue  # listed just before kill() deleted it
                if name not in self._live:
                    self._live[name] = (uid, self._start_backend(name))
                if uid not in self._readied and name not in self._held:
                    self.kubelet.set_ready(self.namespace, name, True)
                    self._readied.add(uid)
                    self._ready_names.add(name)
            for name in self._ready_names - set(alive):
                # Gone: a pod recreated under this name must earn readiness again.
                self.kubelet.set_ready(self.namespace, name, False)
                self._ready_names.discard(name)

    def _start_backend(self, pod: str) -> AccountsBackend:
        ip = self.kubelet.ip_for(self.namespace, pod)
        backend = AccountsBackend(ip, self.port, self._ordinals[pod], self.strategy, name=pod,
                                  start=self.ordinals_start).start()
        self.ledgers.append(backend.ledger)
        return backend

