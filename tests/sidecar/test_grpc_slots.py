"""Slot mode over HTTP/2 and gRPC (SPEC §6, §8), and calls a backend did not process.

Real grpcio clients throughout. The owners are grpcio servers that check the fencing
metadata and the slot's owner (grpc_backends.py), or, for what grpcio servers never
do on purpose (a 421, a GOAWAY leaving streams unprocessed, REFUSED_STREAM), the small
h2-library backend of h2_backend.py. The map is fed as discovery feeds it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from sidecar.shardfn import ordinal_for
from tests.sidecar.grpc_backends import GrpcBackend
from tests.sidecar.h2_backend import H2Backend
from tests.sidecar.harness import SidecarThread
from tests.sidecar.test_grpc import GRPC_HEADERS, grpc_frame, h2_call, wait_for
from tests.sidecar.test_slot_mode import S, account_in, feed, smap

OWNERS = [0, 0, 0, 0, 1, 1, 1, 1]  # FIRST: 0-3:0,4-7:1
#: Slot 2 handed from ordinal 0 to 1 (epoch 2).
MOVED = [0, 0, 1, 0, 1, 1, 1, 1]


def md(key: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("x-shard-key", key), *extra]


def call_error(fn: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def addresses(backends: list[Any]) -> list[tuple[str, int]]:
    return [("127.0.0.1", b.port) for b in backends]


def slot_sidecar(make: Callable[..., SidecarThread], backends: list[Any], *extra: str,
                 epoch: int = 1) -> SidecarThread:
    sidecar = make("--route", "acct=" + ",".join(b.address for b in backends),
                   "--static-probe", "0", *extra)
    feed(sidecar, smap(epoch), addresses(backends))
    return sidecar


@pytest.fixture
def h2_backends() -> Iterator[list[H2Backend]]:
    started: list[H2Backend] = []
    yield started
    for backend in started:
        backend.close()


# --- slot mode with grpcio owners -----------------------------------------------------------

def test_slot_mode_calls_reach_the_slot_owner_with_fencing_metadata(
        make_sidecar: Callable[..., SidecarThread]) -> None:
    backends = [GrpcBackend(o, owners=OWNERS).start() for o in (0, 1)]
    try:
        sidecar = slot_sidecar(make_sidecar, backends, epoch=5)
        with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as ch:
            unary = ch.unary_unary("/shard.Echo/Unary")
            for slot in range(S):
                key = account_in(slot)
                # a client's own fencing fields never reach the backend
                forged = md(key, ("x-shard-epoch", "99"), ("x-shard-slot", "7"),
                            ("x-shard-count", "3"))
                answer = json.loads(unary(b"abc", metadata=forged, timeout=5))
                assert answer == {"ordinal": OWNERS[slot], "key": key, "size": 3}
                seen = backends[OWNERS[slot]].metadata[-1]
                assert (seen["x-shard-slot"], seen["x-shard-slots"], seen["x-shard-epoch"],
                        seen["x-shard-ordinal"]) == (str(slot), "8", "5", str(OWNERS[slot]))
                assert "x-shard-count" not in seen
            key = account_in(6)
            messages = list(ch.unary_stream("/shard.Echo/ServerStream")(
                b"50:1000", metadata=md(key), timeout=10))
            assert messages == [bytes([1]) * 1000] * 50
            upload = ch.stream_unary("/shard.Echo/ClientStream")
            assert json.loads(upload(iter([b"u" * 70_000] * 20), metadata=md(account_in(1)),
                                     timeout=10)) == {"ordinal": 0, "messages": 20,
                                                      "bytes": 1_400_000}
            replies = list(ch.stream_stream("/shard.Echo/Bidi")(
                iter([b"a", b"b"]), metadata=md(account_in(5)), timeout=10))
            assert replies == [b"1:a", b"1:b"]
    finally:
        for backend in backends:
            backend.close()


def test_slot_errors_are_grpc_statuses(make_sidecar: Callable[..., SidecarThread]) -> None:
    """A migrating slot: UNAVAILABLE with retry-after (held under wait:<ms>, then sent to
    the new owner); no assignment: UNAVAILABLE naming `reshard --init`."""
    backends = [GrpcBackend(o, owners=MOVED).start() for o in (0, 1)]
    try:
        failing = slot_sidecar(make_sidecar, backends)
        waiting = slot_sidecar(make_sidecar, backends, "--unavailable", "wait:3000")
        for sidecar in (failing, waiting):
            feed(sidecar, smap(2, migrating="2:0>1"), addresses(backends))
        key = account_in(2)
        with grpc.insecure_channel(f"127.0.0.1:{failing.port}") as ch:
            unary = ch.unary_unary("/shard.Echo/Unary")
            err = call_error(lambda: unary(b"", metadata=md(key), timeout=5))
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert "slot 2 of route 'acct' is moving from ordinal 0 to 1" in (err.details() or "")
            assert ("retry-after", "1") in tuple(err.trailing_metadata() or ())
            feed(failing, smap(3, None), addresses(backends))
            err = call_error(lambda: unary(b"", metadata=md(key), timeout=5))
            assert err.code() == grpc.StatusCode.UNAVAILABLE and "--init" in (err.details() or "")
        results: list[Any] = []
        with grpc.insecure_channel(f"127.0.0.1:{waiting.port}") as ch:
            unary = ch.unary_unary("/shard.Echo/Unary")
            client = threading.Thread(target=lambda: results.append(
                json.loads(unary(b"", metadata=md(key), timeout=10))))
            client.start()
            time.sleep(0.4)
            assert not results  # held
            feed(waiting, smap(3, "0-1:0,2-7:1"), addresses(backends))
            client.join(10)
        assert results == [{"ordinal": 1, "key": key, "size": 0}]
        assert not backends[0].calls  # never sent to the old owner
        assert waiting.sidecar.stats.slot_held == {("acct", "migrating"): 1}
    finally:
        for backend in backends:
            backend.close()


# --- a 421 ------------------------------------------------------------------------------------

def test_a_421_waits_for_the_newer_map_and_replays_to_the_new_owner(
        make_sidecar: Callable[..., SidecarThread], h2_backends: list[H2Backend]) -> None:
    h2_backends += [H2Backend(o, MOVED, epoch=2) for o in (0, 1)]
    sidecar = slot_sidecar(make_sidecar, h2_backends, "--timeout", "5s")
    key = account_in(2)
    results: list[Any] = []
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as ch:
        upload = ch.stream_unary("/shard.Echo/ClientStream")
        client = threading.Thread(target=lambda: results.append(json.loads(upload(
            iter([b"m" * 1000] * 3), metadata=md(key), timeout=10))))
        client.start()
        wait_for(lambda: h2_backends[0].misdirected == [key])
        time.sleep(0.3)
        assert not results  # the 421 was not relayed: the call waits for epoch 2
        feed(sidecar, smap(2, "0-1:0,2-7:1"), addresses(h2_backends))
        client.join(10)
    answer = results[0]
    assert (answer["ordinal"], answer["x-shard-slot"], answer["x-shard-epoch"],
            answer["messages"]) == (1, "2", "2", [1000] * 3)  # the whole body, replayed
    assert h2_backends[1].misdirected == [] and len(h2_backends[1].answered) == 1
    assert sidecar.sidecar.stats.misdirected == {("acct", "0"): 1}
    assert sidecar.sidecar.stats.slot_held == {("acct", "epoch"): 1}


def test_a_421_is_replayed_once_and_never_past_the_bound(
        make_sidecar: Callable[..., SidecarThread], h2_backends: list[H2Backend]) -> None:
    """A second 421 after the replay, a body over --max-json-body, a 421 with no newer
    epoch: UNAVAILABLE (gRPC) or 503 JSON with retry-after, never the 421 itself."""
    h2_backends += [H2Backend(0, MOVED, epoch=2), H2Backend(1, OWNERS, epoch=3)]
    sidecar = slot_sidecar(make_sidecar, h2_backends, "--timeout", "5s",
                           "--max-json-body", "4096")
    feed(sidecar, smap(2, "0-1:0,2-7:1"), addresses(h2_backends))  # names 1, who refuses
    key = account_in(2)
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as ch:
        unary = ch.unary_unary("/shard.Echo/Unary")
        done: list[grpc.RpcError] = []
        client = threading.Thread(target=lambda: done.append(call_error(
            lambda: unary(b"x", metadata=md(key), timeout=10))))
        client.start()
        wait_for(lambda: h2_backends[1].misdirected == [key])
        feed(sidecar, smap(3), addresses(h2_backends))  # names 0 again, who refuses too
        client.join(10)
        err = done[0]
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "replayed to it once already" in (err.details() or "")
        assert h2_backends[0].misdirected == [key] and not h2_backends[0].answered
        # a client stream over the bound was streamed: it cannot be replayed
        feed(sidecar, smap(4, "0-1:0,2-7:1"), addresses(h2_backends))
        upload = ch.stream_unary("/shard.Echo/ClientStream")
        err = call_error(lambda: upload(iter([b"b" * 3000] * 2), metadata=md(key), timeout=10))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "over 4096 bytes (--max-json-body)" in (err.details() or "")
        assert ("retry-after", "1") in tuple(err.trailing_metadata() or ())
    # HTTP/2 that is not gRPC: the JSON error; the backend's epoch (3) is not newer
    head, body, _, _ = h2_call(sidecar.port, [(":path", "/acct/x"), ("x-shard-key", key)], b"hi")
    error = json.loads(body)
    assert (head[":status"], head["retry-after"], error["error"]) == ("503", "1",
                                                                       "shard_unavailable")
    assert "routed at epoch 4: no newer map" in error["message"]
    assert not h2_backends[1].answered


# --- calls a backend did not process -----------------------------------------------------------

def test_goaway_unprocessed_calls_are_sent_again_to_the_same_ordinal(
        make_sidecar: Callable[..., SidecarThread], h2_backends: list[H2Backend]) -> None:
    """Ordinal 0 sends GOAWAY with the first of three streams as its last stream id: that
    one is answered on the old connection, the other two on a new one to ordinal 0,
    bodies whole. A body over the bound cannot be sent again: UNAVAILABLE."""
    h2_backends += [H2Backend(0), H2Backend(1)]
    h2_backends[0].goaway_after = 3
    sidecar = make_sidecar("--route", "svc=" + ",".join(b.address for b in h2_backends),
                           "--static-probe", "0", "--max-json-body", "4096")
    keys = [k for k in (str(i) for i in range(100)) if ordinal_for(k, "modulo", 2) == 0][:3]
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as ch:
        upload = ch.stream_unary("/shard.Echo/ClientStream")
        calls = [upload.future(iter([b"g" * 500] * (i + 1)), metadata=md(k), timeout=10)
                 for i, k in enumerate(keys)]
        answers = [json.loads(c.result(10)) for c in calls]
        assert sorted(len(a["messages"]) for a in answers) == [1, 2, 3]
        assert all(a["messages"] == [500] * len(a["messages"]) for a in answers)
        assert sorted(a["conn"] for a in answers) == [0, 1, 1]
        assert {a["ordinal"] for a in answers} == {0} and h2_backends[0].connections == 2
        assert h2_backends[1].whole == 0  # never another ordinal
        # over the bound: streamed, so it cannot be sent again
        backend = H2Backend(0)
        h2_backends.append(backend)
        backend.goaway_after = 2
        sidecar = make_sidecar("--route", f"svc={backend.address}", "--static-probe", "0",
                               "--max-json-body", "4096")
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as ch:
        first = ch.unary_unary("/shard.Echo/Unary").future(b"1", metadata=md("a"), timeout=10)
        wait_for(lambda: backend.whole == 1)
        upload = ch.stream_unary("/shard.Echo/ClientStream")
        err = call_error(lambda: upload(iter([b"o" * 3000] * 2), metadata=md("b"), timeout=10))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "went away (GOAWAY" in (err.details() or "")
        assert "cannot be sent again" in (err.details() or "")
        assert ("retry-after", "1") in tuple(err.trailing_metadata() or ())
        assert json.loads(first.result(10))["conn"] == 0


def test_refused_streams_are_sent_again(make_sidecar: Callable[..., SidecarThread],
                                        h2_backends: list[H2Backend]) -> None:
    h2_backends.append(H2Backend(0))
    backend = h2_backends[0]
    backend.refuse = 1
    sidecar = make_sidecar("--route", f"svc={backend.address}", "--static-probe", "0")
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as ch:
        answer = json.loads(ch.unary_unary("/shard.Echo/Unary")(b"body", metadata=md("r"),
                                                                timeout=5))
    assert answer["messages"] == [4] and backend.refused == [1] and answer["sid"] == 3
    # non-gRPC HTTP/2 too, and a backend that refuses every time is UNAVAILABLE / 503
    backend.refuse = 10
    head, body, _, _ = h2_call(sidecar.port, [*GRPC_HEADERS[:1], ("x-shard-key", "r")], b"x")
    assert head[":status"] == "503" and head["retry-after"] == "1"
    assert "REFUSED_STREAM" in json.loads(body)["message"]
    assert "sent 3 times" in json.loads(body)["message"]
    head, _, trailers, _ = h2_call(sidecar.port, [*GRPC_HEADERS, ("x-shard-key", "r")],
                                   grpc_frame(b"1"))
    assert {**head, **trailers}["grpc-status"] == "14"


def test_bodies_kept_to_send_again_share_one_budget(
        make_sidecar: Callable[..., SidecarThread], h2_backends: list[H2Backend]) -> None:
    """--buffer-budget bounds what every HTTP/2 call keeps together: with one 700 kB body
    kept, a second one cannot be, so after the GOAWAY only the first is sent again."""
    backend = H2Backend(0)
    h2_backends.append(backend)
    backend.goaway_after = 3
    sidecar = make_sidecar("--route", f"svc={backend.address}", "--static-probe", "0",
                           "--max-json-body", "800000", "--buffer-budget", str(1 << 20))
    upload_of = [b"k" * 100_000] * 7
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as ch:
        first = ch.unary_unary("/shard.Echo/Unary").future(b"1", metadata=md("a"), timeout=10)
        wait_for(lambda: backend.whole == 1)
        upload = ch.stream_unary("/shard.Echo/ClientStream")
        kept = upload.future(iter(upload_of), metadata=md("b"), timeout=10)
        wait_for(lambda: backend.whole == 2)
        err = call_error(lambda: upload(iter(upload_of), metadata=md("c"), timeout=10))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "over the bound kept to send it again" in (err.details() or "")
        answer = json.loads(kept.result(10))
        assert (answer["conn"], answer["messages"]) == (1, [100_000] * 7)
        assert json.loads(first.result(10))["conn"] == 0

    def kept_bytes() -> int:
        shared = sidecar.sidecar.ctx.h2
        assert shared is not None
        return shared.replays.kept
    wait_for(lambda: sidecar.call(kept_bytes) == 0)  # all given back
