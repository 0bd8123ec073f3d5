"""gRPC through a sidecar that follows a real StatefulSet (the real kube-apiserver).

The backends are grpcio servers bound to the loopback IP the simulated kubelet
gives each pod, and answer FAILED_PRECONDITION to a call that is not theirs by
the sidecar's ``x-shard-count`` at the time: a successful call is a call that
reached its owner, whatever the map went through.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import grpc
import pytest

from sidecar.shardfn import ordinal_for
from tests.cluster.waiting import wait_for
from tests.sidecar.grpc_backends import GrpcBackend
from tests.sidecar.h2_backend import H2Backend
from tests.sidecar.test_cluster import PORT, STS, Cluster, all_ready, statefulset

pytestmark = pytest.mark.cluster

KEYS = [str(i) for i in range(48)]


class GrpcPods:
    """One grpcio backend per ordinal, on that pod's loopback IP."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.backends: dict[int, GrpcBackend] = {}

    def start(self, ordinal: int) -> None:
        ip = self.cluster.kubelet.ip_for(self.cluster.namespace, f"{STS}-{ordinal}")
        self.backends[ordinal] = GrpcBackend(ordinal, PORT, host=ip).start()

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()


@pytest.fixture
def pods(cluster: Cluster) -> Iterator[GrpcPods]:  # noqa: F811 (the imported fixture)
    started = GrpcPods(cluster)
    yield started
    started.close()


def call_all(unary: grpc.UnaryUnaryMultiCallable, keys: list[str]
             ) -> dict[str, tuple[grpc.StatusCode, int | None, tuple[tuple[str, str], ...]]]:
    """Per key: (status, the answering ordinal or None, trailing metadata of an error)."""
    answers = {}
    for key in keys:
        try:
            reply = json.loads(unary(b"ping", metadata=[("x-shard-key", key)], timeout=5))
            answers[key] = (grpc.StatusCode.OK, int(reply["ordinal"]), ())
        except grpc.RpcError as err:
            answers[key] = (err.code(), None, tuple(err.trailing_metadata() or ()))
    return answers


def test_grpc_follows_the_statefulset_through_unready_and_scale_up(
        cluster: Cluster, pods: GrpcPods) -> None:  # noqa: F811 (the imported fixture)
    for ordinal in range(3):
        pods.start(ordinal)
    cluster.apps.create_namespaced_stateful_set(cluster.namespace, statefulset(STS, 3))
    sidecar = cluster.start_sidecar({"shard.io/backend": f"{STS}:{PORT}"})
    cluster.wait_map(all_ready(3), "3 ready ordinals")
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
        unary = channel.unary_unary("/shard.Echo/Unary")
        # Every key at its owner, over one client connection.
        answers = call_all(unary, KEYS)
        assert answers == {k: (grpc.StatusCode.OK, int(k) % 3, ()) for k in KEYS}

        # Ordinal 1 unready: its keys get UNAVAILABLE with retry-after, the others still work.
        calls_1 = len(pods.backends[1].calls)
        cluster.kubelet.set_ready(cluster.namespace, f"{STS}-1", False)
        cluster.wait_map(lambda s: not s.shards[1].ready and s.shards[0].ready, "1 unready")
        for key, (code, ordinal, trailers) in call_all(unary, KEYS).items():
            if int(key) % 3 == 1:
                assert (code, ("retry-after", "1") in trailers) == \
                    (grpc.StatusCode.UNAVAILABLE, True), key
            else:
                assert (code, ordinal) == (grpc.StatusCode.OK, int(key) % 3), key
        assert len(pods.backends[1].calls) == calls_1, "no call reached the unready pod"
        cluster.kubelet.set_ready(cluster.namespace, f"{STS}-1", True)
        cluster.wait_map(all_ready(3), "ordinal 1 ready again")

        # Scale to 4 with the new pod not ready yet: its keys wait (UNAVAILABLE), the
        # rest move to their owners by 4 at once, none to a wrong ordinal.
        pods.start(3)
        cluster.kubelet.set_ready(cluster.namespace, f"{STS}-3", False)
        cluster.apps.patch_namespaced_stateful_set_scale(STS, cluster.namespace,
                                                         {"spec": {"replicas": 4}})
        cluster.wait_map(lambda s: s.count == 4 and len(s.shards) == 4 and not s.shards[3].ready
                         and all(sh.ready for sh in s.shards[:3]), "4 ordinals, 3 unready")
        for key, (code, ordinal, trailers) in call_all(unary, KEYS).items():
            if int(key) % 4 == 3:
                assert (code, ("retry-after", "1") in trailers) == \
                    (grpc.StatusCode.UNAVAILABLE, True), key
            else:
                assert (code, ordinal) == (grpc.StatusCode.OK, int(key) % 4), key
        cluster.kubelet.set_ready(cluster.namespace, f"{STS}-3", True)
        cluster.wait_map(all_ready(4), "4 ready ordinals")
        answers = call_all(unary, KEYS)
        assert answers == {k: (grpc.StatusCode.OK, int(k) % 4, ()) for k in KEYS}
    # The backends' own check (FAILED_PRECONDITION otherwise) held on every call they saw.
    assert all(backend.calls for backend in pods.backends.values())
    assert all(ordinal_for(key, "modulo", 4) == 3 for _, key in pods.backends[3].calls)


def test_grpc_slot_mode_replays_a_421_once_the_statefulsets_map_reaches_its_epoch(
        cluster: Cluster) -> None:  # noqa: F811 (the imported fixture)
    """Slot mode from the StatefulSet's annotations: calls carry its epoch; ordinal 0
    already handed slot 2 to ordinal 1 (epoch 2), so a call for it is refused (421) and
    replayed to ordinal 1 once the sidecar's watch sees the map at epoch 2."""
    owners = [0, 0, 1, 0, 1, 1, 1, 1]
    backends = [H2Backend(o, owners, epoch=2, port=PORT,
                          host=cluster.kubelet.ip_for(cluster.namespace, f"{STS}-{o}"))
                for o in (0, 1)]
    try:
        sts = statefulset(STS, 2)
        sts["metadata"]["annotations"] = {"shard.io/slots": "8", "shard.io/epoch": "1",
                                          "shard.io/assignment": "0-3:0,4-7:1"}
        cluster.apps.create_namespaced_stateful_set(cluster.namespace, sts)
        sidecar = cluster.start_sidecar({"shard.io/backend": f"{STS}:{PORT}"})
        cluster.wait_map(lambda s: all_ready(2)(s) and s.slotmap is not None and
                         s.slotmap.epoch == 1, "2 ready ordinals, slot map at epoch 1")
        keys = {ordinal_for(str(n), "modulo", 8): str(n) for n in range(200)}
        with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            unary = channel.unary_unary("/shard.Echo/Unary")
            for slot in (0, 5):
                answer = json.loads(unary(b"p", metadata=[("x-shard-key", keys[slot])],
                                          timeout=5))
                assert (answer["ordinal"], answer["x-shard-slot"], answer["x-shard-epoch"]) == (
                    owners[slot], str(slot), "1")
            results: list[dict[str, object]] = []
            client = threading.Thread(target=lambda: results.append(json.loads(unary(
                b"p", metadata=[("x-shard-key", keys[2])], timeout=20))))
            client.start()
            wait_for(lambda: backends[0].misdirected == [keys[2]], "the 421", timeout=10)
            assert not results
            cluster.apps.patch_namespaced_stateful_set(STS, cluster.namespace, {"metadata": {
                "annotations": {"shard.io/epoch": "2", "shard.io/assignment": "0-1:0,2-7:1"}}})
            client.join(20)
        assert (results[0]["ordinal"], results[0]["x-shard-epoch"]) == (1, "2")
        assert backends[1].misdirected == []
    finally:
        for backend in backends:
            backend.close()
